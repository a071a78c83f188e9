//! Configuration layering and the files users rely on (`workers.toml`, `docker-compose.yml`).
//! One test function: it sets environment variables, which are process-wide.

use std::path::Path;

use ragpipe::config::Settings;
use secrecy::ExposeSecret;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn config_layers_validate_and_the_shipped_files_parse() {
    // workers.toml documents every section and parses with unknown keys rejected.
    let shipped = Settings::load(Some(&root().join("workers.toml"))).expect("workers.toml loads and validates");
    assert_eq!(shipped.broker.ingest_queue, "ragpipe.ingest");
    assert_eq!(shipped.cache.embedding_ttl_secs, 86_400);

    // The environment beats the file; lists split on commas; URLs stay secret in Debug output.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("w.toml");
    std::fs::write(&file, "[database]\npool_size = 7\nurl = \"postgres://u:file-secret@h/db\"\n").expect("write");
    // SAFETY: this binary has a single test, so no other thread reads the environment meanwhile.
    unsafe {
        std::env::set_var("RAGPIPE__DATABASE__POOL_SIZE", "42");
        std::env::set_var("RAGPIPE__STORAGE__ALLOWED_ROOTS", "/srv/a,/srv/b");
    }
    let layered = Settings::load(Some(&file)).expect("layered config");
    assert_eq!(layered.database.pool_size, 42);
    assert_eq!(layered.storage.allowed_roots, vec![Path::new("/srv/a"), Path::new("/srv/b")]);
    assert_eq!(
        layered.database.url.as_ref().map(|u| u.expose_secret().to_owned()).as_deref(),
        Some("postgres://u:file-secret@h/db")
    );
    assert!(!format!("{layered:?}").contains("file-secret"), "secrets never appear in Debug output");

    // Roots also as a JSON array; what is no list of paths is an error naming the key.
    unsafe { std::env::set_var("RAGPIPE__STORAGE__ALLOWED_ROOTS", r#"["/srv/a", "/srv/b c"]"#) };
    let layered = Settings::load(Some(&file)).expect("a JSON array of roots");
    assert_eq!(layered.storage.allowed_roots, vec![Path::new("/srv/a"), Path::new("/srv/b c")]);
    unsafe { std::env::set_var("RAGPIPE__STORAGE__ALLOWED_ROOTS", r#"["/srv/a", "/srv/b""#) };
    let error = Settings::load(Some(&file)).expect_err("a broken array").to_string();
    assert!(error.contains("allowed_roots"), "{error}");
    unsafe { std::env::remove_var("RAGPIPE__STORAGE__ALLOWED_ROOTS") };

    // Invalid values and unknown keys are errors that name the key.
    unsafe { std::env::set_var("RAGPIPE__DATABASE__POOL_SIZE", "0") };
    let error = Settings::load(Some(&file)).expect_err("pool_size 0").to_string();
    assert!(error.contains("database.pool_size"), "{error}");
    unsafe {
        std::env::remove_var("RAGPIPE__DATABASE__POOL_SIZE");
        std::env::remove_var("RAGPIPE__STORAGE__ALLOWED_ROOTS");
    }
    std::fs::write(&file, "[database]\npool_sise = 7\n").expect("write");
    let error = Settings::load(Some(&file)).expect_err("typo").to_string();
    assert!(error.contains("pool_sise"), "{error}");
    let error = Settings::load(Some(&dir.path().join("missing.toml"))).expect_err("missing file").to_string();
    assert!(error.contains("missing.toml"), "{error}");

    // docker-compose.yml is for users (no Docker engine here): it must at least parse and wire
    // every worker to the three services through RAGPIPE__ variables.
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).expect("read compose"))
            .expect("docker-compose.yml is valid YAML");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["rabbitmq", "postgres", "redis", "ingest", "query"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    let env = &compose["services"]["query"]["environment"];
    for key in ["RAGPIPE__BROKER__URL", "RAGPIPE__DATABASE__URL", "RAGPIPE__CACHE__URL"] {
        assert!(env[key].as_str().is_some_and(|v| !v.is_empty()), "{key} missing from the query worker");
    }
}
