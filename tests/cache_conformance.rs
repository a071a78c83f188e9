//! The cache's conformance suite: every case runs against Redis (a real server, a key prefix of
//! its own) and against the in-process cache (moka), and asserts the same behaviour.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ragpipe::cache::Cache;
use ragpipe::cache::memory::MemoryCache;
use ragpipe::cache::redis::RedisCache;
use ragpipe::config::CacheSettings;
use secrecy::SecretString;

/// Both backends, each isolated from every other test.
fn caches() -> Vec<(&'static str, Arc<dyn Cache>)> {
    let settings = CacheSettings {
        url: Some(SecretString::from(common::redis_url())),
        key_prefix: format!("ragpipe-test:{}:", uuid::Uuid::new_v4().simple()),
        ..CacheSettings::default()
    };
    let redis: Arc<dyn Cache> = Arc::new(RedisCache::new(settings.url.as_ref().expect("url"), &settings));
    vec![("redis", redis), ("memory", Arc::new(MemoryCache::new(1000)))]
}

fn entries(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect()
}

#[tokio::test]
async fn values_come_back_in_order_with_misses_and_overwrites() {
    for (name, cache) in caches() {
        cache.set_many(&entries(&[("a", "1"), ("b", "2")]), Duration::from_secs(60)).await;
        cache.set("b", b"3".to_vec(), Duration::from_secs(60)).await;
        let keys = ["a", "missing", "b"].map(str::to_owned);
        let got = cache.get_many(&keys).await;
        assert_eq!(got, vec![Some(b"1".to_vec()), None, Some(b"3".to_vec())], "{name}");
        assert!(cache.get_many(&[]).await.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn each_entry_expires_after_its_own_ttl() {
    for (name, cache) in caches() {
        cache.set("short", b"s".to_vec(), Duration::from_millis(200)).await;
        cache.set("long", b"l".to_vec(), Duration::from_secs(60)).await;
        assert_eq!(cache.get("short").await.as_deref(), Some(&b"s"[..]), "{name}");
        // Expiry is the event waited for, with a deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while cache.get("short").await.is_some() {
            assert!(tokio::time::Instant::now() < deadline, "{name}: a 200 ms entry outlived 5 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(cache.get("long").await.as_deref(), Some(&b"l"[..]), "{name}: the other entry stays");
    }
}

#[tokio::test]
async fn caches_with_different_prefixes_or_processes_do_not_see_each_other() {
    for ((name, one), (_, two)) in caches().into_iter().zip(caches()) {
        one.set("shared-key", b"one".to_vec(), Duration::from_secs(60)).await;
        two.set("shared-key", b"two".to_vec(), Duration::from_secs(60)).await;
        assert_eq!(one.get("shared-key").await.as_deref(), Some(&b"one"[..]), "{name}");
        assert_eq!(two.get("shared-key").await.as_deref(), Some(&b"two"[..]), "{name}");
    }
}

#[tokio::test]
async fn an_unreachable_redis_is_a_miss_not_an_error() {
    let settings = CacheSettings {
        url: Some(SecretString::from("redis://127.0.0.1:1/0")),
        timeout_ms: 200,
        ..CacheSettings::default()
    };
    let cache = RedisCache::new(settings.url.as_ref().expect("url"), &settings);
    cache.set("k", b"v".to_vec(), Duration::from_secs(60)).await;
    assert_eq!(cache.get("k").await, None);
}

#[tokio::test]
async fn the_in_process_cache_is_bounded() {
    let cache = MemoryCache::new(50);
    for i in 0..1000 {
        cache.set(&format!("k{i}"), vec![0; 16], Duration::from_secs(60)).await;
    }
    let held = cache.len().await;
    assert!(held <= 50, "{held} entries held by a 50-entry cache");
}
