//! The queue's conformance suite: every case runs against RabbitMQ and against the embedded
//! queue (SQLite job table), and asserts the same behaviour through the same ports.

mod common;

use std::time::Duration;

use common::TestEnv;
use futures::StreamExt;
use ragpipe::queue::{DeadLetterReason, Deliveries, Delivery, Queue};

on_both_backends!(
    a_published_upload_is_delivered_once_and_gone_after_its_ack,
    uploads_published_together_are_each_delivered_once,
    an_upload_handed_back_is_delivered_again_after_its_delay,
    an_upload_whose_consumer_went_away_unsettled_is_delivered_again,
    a_dead_lettered_upload_keeps_its_reason,
    an_upload_returned_beyond_the_delivery_limit_is_dead_lettered,
    subscribers_see_matching_events_published_after_they_subscribed,
    a_request_gets_its_reply,
    a_reply_streams_its_parts_in_order_and_a_discarded_request_gets_none,
);

async fn next(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(Duration::from_secs(30), deliveries.next())
        .await
        .expect("a delivery within 30 s")
        .expect("stream open")
        .expect("delivery ok")
}

/// Whether another delivery arrives within `wait` (used only to prove absence).
async fn nothing_within(deliveries: &mut Deliveries, wait: Duration) -> bool {
    tokio::time::timeout(wait, deliveries.next()).await.is_err()
}

async fn a_published_upload_is_delivered_once_and_gone_after_its_ack(env: TestEnv) {
    let queue = env.queue().await;
    assert!(!queue.uploads.has_consumers().await.expect("consumers"), "nobody consumes yet");
    queue.uploads.publish(b"one").await.expect("publish");
    let mut deliveries = queue.uploads.consume().await.expect("consume");
    let delivery = next(&mut deliveries).await;
    assert_eq!((delivery.body.as_slice(), delivery.attempt), (&b"one"[..], 1));
    assert!(queue.uploads.has_consumers().await.expect("consumers"), "a consumer is registered");
    delivery.ack().await.expect("ack");
    assert!(nothing_within(&mut deliveries, Duration::from_millis(500)).await, "acked means gone");
    let depths = queue.uploads.depths().await.expect("depths");
    assert_eq!((depths.ingest, depths.dead), (0, 0));
}

async fn uploads_published_together_are_each_delivered_once(env: TestEnv) {
    let queue = env.queue().await;
    queue.uploads.publish_all(&[]).await.expect("nothing to publish");
    let bodies: Vec<Vec<u8>> = (0..150).map(|i| format!("upload {i}").into_bytes()).collect();
    queue.uploads.publish_all(&bodies).await.expect("publish all");
    assert_eq!(queue.uploads.depths().await.expect("depths").ingest, 150, "all durable on return");
    let mut deliveries = queue.uploads.consume().await.expect("consume");
    let mut got = Vec::new();
    while got.len() < bodies.len() {
        let delivery = next(&mut deliveries).await;
        got.push(delivery.body.clone());
        delivery.ack().await.expect("ack");
    }
    got.sort();
    let mut want = bodies;
    want.sort();
    assert_eq!(got, want, "each once");
    assert!(nothing_within(&mut deliveries, Duration::from_millis(500)).await, "and no more");
}

async fn an_upload_handed_back_is_delivered_again_after_its_delay(env: TestEnv) {
    let queue = env.queue().await;
    queue.uploads.publish(b"again").await.expect("publish");
    let mut deliveries = queue.uploads.consume().await.expect("consume");
    let first = next(&mut deliveries).await;
    let handed_back = tokio::time::Instant::now();
    first.retry_after(Duration::from_millis(300)).await.expect("retry");
    let second = next(&mut deliveries).await;
    assert!(handed_back.elapsed() >= Duration::from_millis(300), "not before its delay");
    assert_eq!((second.body.as_slice(), second.attempt), (&b"again"[..], 2));
    second.ack().await.expect("ack");
}

async fn an_upload_whose_consumer_went_away_unsettled_is_delivered_again(env: TestEnv) {
    let queue = env.queue().await;
    queue.uploads.publish(b"orphan").await.expect("publish");
    // A consumer on its own connection takes it and goes away without settling it.
    let gone = env.queue().await;
    let mut deliveries = gone.uploads.consume().await.expect("consume");
    let taken = next(&mut deliveries).await;
    drop((taken, deliveries));
    gone.close().await;
    let mut deliveries = queue.uploads.consume().await.expect("consume");
    let again = next(&mut deliveries).await;
    assert_eq!((again.body.as_slice(), again.attempt), (&b"orphan"[..], 2));
    again.ack().await.expect("ack");
}

async fn a_dead_lettered_upload_keeps_its_reason(env: TestEnv) {
    let queue = env.queue().await;
    queue.uploads.publish(b"poison").await.expect("publish");
    let mut deliveries = queue.uploads.consume().await.expect("consume");
    let reason = DeadLetterReason { code: "corrupt".into(), reason: "not a PDF after all".into(), retryable: false };
    next(&mut deliveries).await.dead_letter(&reason).await.expect("dead-letter");
    assert!(nothing_within(&mut deliveries, Duration::from_millis(500)).await, "dead-lettered means gone");
    let dead = queue.uploads.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].body.as_slice(), &dead[0].reason), (&b"poison"[..], &reason));
    // Inspecting leaves them in place (RabbitMQ puts them back as the inspecting channel closes).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while queue.uploads.depths().await.expect("depths").dead != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the dead letter is still there after inspection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_upload_returned_beyond_the_delivery_limit_is_dead_lettered(mut env: TestEnv) {
    env.settings.broker.delivery_limit = 2;
    let queue = env.queue().await;
    queue.uploads.publish(b"crashes the worker").await.expect("publish");
    let mut deliveries = queue.uploads.consume().await.expect("consume");
    // Returned twice is allowed; the third return is over the limit (RabbitMQ's count).
    for attempt in 1..=3 {
        let delivery = next(&mut deliveries).await;
        assert_eq!(delivery.attempt, attempt);
        delivery.retry_after(Duration::ZERO).await.expect("retry");
    }
    assert!(nothing_within(&mut deliveries, Duration::from_secs(1)).await, "not delivered a fourth time");
    let dead = queue.uploads.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, b"crashes the worker");
    assert_eq!(dead[0].reason.code, "delivery_limit", "{:?}", dead[0].reason);
}

async fn subscribers_see_matching_events_published_after_they_subscribed(env: TestEnv) {
    let queue = env.queue().await;
    queue.events.publish("document.ingested", b"before").await.expect("publish");
    let mut documents = queue.events.subscribe(&["document.*"]).await.expect("subscribe");
    let mut everything = queue.events.subscribe(&["#"]).await.expect("subscribe");
    queue.events.publish("index.rebuilt", b"rebuilt").await.expect("publish");
    queue.events.publish("document.failed", b"failed").await.expect("publish");
    let event = next_event(&mut documents).await;
    assert_eq!((event.routing_key.as_str(), event.body.as_slice()), ("document.failed", &b"failed"[..]));
    let first = next_event(&mut everything).await.routing_key;
    let keys = [first, next_event(&mut everything).await.routing_key];
    assert_eq!(keys, ["index.rebuilt", "document.failed"], "in publish order, nothing from before");
    // Published together: each reaches the subscribers it matches.
    let batch: Vec<(&str, Vec<u8>)> = vec![
        ("document.ingested", b"a".to_vec()),
        ("index.rebuilt", b"b".to_vec()),
        ("document.ingested", b"c".to_vec()),
    ];
    queue.events.publish_all(&batch).await.expect("publish all");
    let mut bodies = vec![next_event(&mut documents).await.body, next_event(&mut documents).await.body];
    bodies.sort();
    assert_eq!(bodies, [b"a".to_vec(), b"c".to_vec()], "the two document events");
    let mut all: Vec<Vec<u8>> = Vec::new();
    for _ in 0..3 {
        all.push(next_event(&mut everything).await.body);
    }
    all.sort();
    assert_eq!(all, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], "all three");
}

async fn next_event(events: &mut ragpipe::queue::Events) -> ragpipe::queue::EventMessage {
    tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("event").expect("open").expect("ok")
}

async fn a_request_gets_its_reply(env: TestEnv) {
    let queue: Queue = env.queue().await;
    let mut requests = queue.requests.serve().await.expect("serve");
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let request = requests.next().await.expect("open").expect("request");
            let answer = [b"echo: ".as_slice(), &request.body].concat();
            request.reply.expect("a reply address").send(&answer).await.expect("reply");
        }
    });
    let (a, b) = tokio::join!(
        queue.requests.request(b"ping", Duration::from_secs(30)),
        queue.requests.request(b"pong", Duration::from_secs(30)),
    );
    assert_eq!(a.expect("reply a"), b"echo: ping", "replies reach their own requester");
    assert_eq!(b.expect("reply b"), b"echo: pong");
    server.await.expect("server");
}

async fn a_reply_streams_its_parts_in_order_and_a_discarded_request_gets_none(env: TestEnv) {
    let queue: Queue = env.queue().await;
    let mut requests = queue.requests.serve().await.expect("serve");
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let request = requests.next().await.expect("open").expect("request");
            let reply = request.reply.expect("a reply address");
            if request.body == b"never mind" {
                reply.discard().await.expect("settled without a reply");
                continue;
            }
            assert!(request.deadline.is_some(), "the requester's timeout reaches the server as a deadline");
            for n in 0..20 {
                reply.send_part(format!("part {n}").as_bytes()).await.expect("part");
            }
            reply.send(b"done").await.expect("reply");
        }
    });
    let mut messages = queue.requests.request_parts(b"stream", Duration::from_secs(30)).await.expect("sent");
    let mut got = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.expect("a message");
        got.push((String::from_utf8(message.body).expect("utf-8"), message.last));
    }
    let mut want: Vec<(String, bool)> = (0..20).map(|n| (format!("part {n}"), false)).collect();
    want.push(("done".into(), true));
    assert_eq!(got, want, "every part in order, then the final reply, then the end");

    let unanswered = queue.requests.request(b"never mind", Duration::from_secs(2)).await;
    assert!(unanswered.is_err(), "a discarded request gets no reply: {unanswered:?}");
    server.await.expect("server");
}
