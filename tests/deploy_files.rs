//! The deployment files checked against the code: `docker-compose.yml`, `Dockerfile`,
//! `.dockerignore` and every manifest under `ops/k8s/`.
//!
//! Commands go through the real command line (`ragpipe::cli::Cli`), so a subcommand, flag or
//! `--role` the code does not have fails here. Every `RAGPIPE__SECTION__KEY` variable goes
//! through the settings loader, which rejects unknown keys and invalid values. Probe ports, the
//! KEDA queue name and grace periods are compared with each workload's *effective* settings:
//! the `workers.toml` baked into the image, then the image's `ENV`, then the workload's own
//! environment (secrets referenced by name stand in with the placeholders of
//! `ops/k8s/examples/secret.example.yaml`). No Docker engine or cluster is needed; `docker
//! compose config` runs only where the client is installed.
//!
//! Each test lists every problem it finds, naming the file, the service or object, and the key.
#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::{CommandFactory, FromArgMatches, ValueEnum};
use ragpipe::cli::{Cli, Command};
use ragpipe::config::{CONFIG_ENV, EmbedderKind, HttpSettings, Settings};
use ragpipe::worker::Role;
use serde::Deserialize;
use serde_yaml::Value;

const COMPOSE: &str = "docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";
const K8S_DIR: &str = "ops/k8s";
const SECRET_EXAMPLE: &str = "ops/k8s/examples/secret.example.yaml";
/// Seconds a worker needs after its roles drained: writing the index snapshots, closing.
const SNAPSHOT_MARGIN_SECS: u64 = 30;
/// Kubernetes' default `terminationGracePeriodSeconds`, and Docker's default stop timeout.
const K8S_DEFAULT_GRACE_SECS: u64 = 30;
const COMPOSE_DEFAULT_GRACE_SECS: u64 = 10;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// Problems found; a test fails listing all of them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, place: &str, what: impl std::fmt::Display) {
        let problem = format!("{place}: {what}");
        if !self.0.contains(&problem) {
            self.0.push(problem);
        }
    }

    fn check(&mut self, ok: bool, place: &str, what: impl FnOnce() -> String) {
        if !ok {
            self.push(place, what());
        }
    }

    fn assert_none(self, what: &str) {
        assert!(self.0.is_empty(), "{what}: {} problem(s)\n  - {}", self.0.len(), self.0.join("\n  - "));
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the files
// ---------------------------------------------------------------------------------------------

/// A scalar as text (YAML numbers and booleans too).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A path of mapping keys.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn text_at(value: &Value, path: &[&str]) -> Option<String> {
    at(value, path).and_then(text)
}

/// A list of strings, or a string split on whitespace (compose's two forms of `command`).
fn words(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items.iter().filter_map(text).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn compose() -> Value {
    let mut doc: Value = serde_yaml::from_str(&read(COMPOSE)).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("docker-compose.yml: `<<` merge keys resolve");
    doc
}

fn compose_services(doc: &Value) -> Vec<(String, Value)> {
    doc.get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has `services`")
        .iter()
        .filter_map(|(name, service)| Some((text(name)?, service.clone())))
        .collect()
}

/// One document of a manifest file.
struct K8sDoc {
    /// `ops/k8s/file.yaml#n` (n counted from 1 within the file).
    place: String,
    file: String,
    value: Value,
}

impl K8sDoc {
    fn kind(&self) -> String {
        text_at(&self.value, &["kind"]).unwrap_or_default()
    }

    fn name(&self) -> String {
        text_at(&self.value, &["metadata", "name"]).unwrap_or_default()
    }

    /// `ops/k8s/file.yaml Kind `name``.
    fn label(&self) -> String {
        format!("{} {} `{}`", self.file, self.kind(), self.name())
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under `ops/k8s/` (multi-document files included).
fn k8s_docs(problems: &mut Problems) -> Vec<K8sDoc> {
    let mut files = Vec::new();
    yaml_files(&root().join(K8S_DIR), &mut files);
    assert!(!files.is_empty(), "no YAML under {K8S_DIR}");
    let mut docs = Vec::new();
    for path in files {
        let file = path.strip_prefix(root()).expect("under the root").display().to_string();
        let content = std::fs::read_to_string(&path).expect("read manifest");
        for (index, document) in serde_yaml::Deserializer::from_str(&content).enumerate() {
            let place = format!("{file}#{}", index + 1);
            match Value::deserialize(document) {
                Ok(Value::Null) => {}
                Ok(value) => docs.push(K8sDoc { place, file: file.clone(), value }),
                Err(error) => problems.push(&place, format!("not valid YAML: {error}")),
            }
        }
    }
    docs
}

/// The Dockerfile's instructions by stage, continuation lines joined, comments dropped.
struct Dockerfile {
    /// (stage name, instructions as (KEYWORD, rest)).
    stages: Vec<(String, Vec<(String, String)>)>,
}

impl Dockerfile {
    fn parse(content: &str) -> Self {
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in content.lines() {
            let trimmed = line.trim();
            // Comments (and the `# syntax=` directive) may also sit inside a continued instruction.
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if let Some(head) = trimmed.strip_suffix('\\') {
                current.push_str(head);
                current.push(' ');
            } else {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
        let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for line in logical {
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line.as_str(), ""));
            let keyword = keyword.to_ascii_uppercase();
            let rest = rest.trim().to_owned();
            if keyword == "FROM" {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let name = match words.as_slice() {
                    [.., as_, name] if as_.eq_ignore_ascii_case("as") => (*name).to_owned(),
                    _ => format!("stage{}", stages.len()),
                };
                stages.push((name, vec![(keyword, rest)]));
            } else if let Some((_, instructions)) = stages.last_mut() {
                instructions.push((keyword, rest));
            }
        }
        Self { stages }
    }

    fn stage(&self, name: &str) -> Option<&[(String, String)]> {
        self.stages.iter().find(|(n, _)| n == name).map(|(_, i)| i.as_slice())
    }

    fn runtime(&self) -> &[(String, String)] {
        self.stages.last().map(|(_, i)| i.as_slice()).expect("the Dockerfile has a stage")
    }

    /// The runtime stage's `ENV` variables.
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (keyword, rest) in self.runtime() {
            if keyword != "ENV" {
                continue;
            }
            if rest.contains('=') {
                for pair in rest.split_whitespace() {
                    if let Some((k, v)) = pair.split_once('=') {
                        env.insert(k.to_owned(), v.trim_matches('"').to_owned());
                    }
                }
            } else if let Some((k, v)) = rest.split_once(char::is_whitespace) {
                env.insert(k.to_owned(), v.trim().trim_matches('"').to_owned());
            }
        }
        env
    }

    /// The last value of a runtime-stage instruction.
    fn last(&self, keyword: &str) -> Option<String> {
        self.runtime().iter().rev().find(|(k, _)| k == keyword).map(|(_, rest)| rest.clone())
    }

    /// A JSON-array (exec form) instruction's words.
    fn exec_form(&self, keyword: &str) -> Option<Vec<String>> {
        serde_json::from_str(&self.last(keyword)?).ok()
    }
}

fn dockerfile() -> Dockerfile {
    Dockerfile::parse(&read(DOCKERFILE))
}

// ---------------------------------------------------------------------------------------------
// Workloads: what runs the ragpipe image, with which arguments and environment
// ---------------------------------------------------------------------------------------------

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum EnvValue {
    /// Written in the file (compose: after `${VAR:-default}` interpolation).
    Literal { raw: String, value: String },
    /// `secretKeyRef`.
    Secret { name: String, key: String },
    /// `resourceFieldRef` / `fieldRef` and the like: computed by Kubernetes.
    Computed,
}

/// A container running the ragpipe image.
struct Workload {
    /// `docker-compose.yml service `ingest`` or `ops/k8s/x.yaml Deployment `n` container `c``.
    place: String,
    /// The role it is named for: the compose service's name or the `app.kubernetes.io/component`
    /// label.
    component: String,
    /// Arguments after the `ragpipe` entrypoint.
    args: Vec<String>,
    env: BTreeMap<String, EnvValue>,
    /// The compose service, or the Kubernetes container.
    container: Value,
    /// Kubernetes: the pod spec (volumes, grace period).
    pod: Option<Value>,
}

/// `${VAR:-default}`, `${VAR-default}`, `${VAR}` and `$$` as compose interpolates them with no
/// variable set.
fn interpolate(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = tail.strip_prefix('{') {
            let end = body.find('}').unwrap_or(body.len());
            let expr = &body[..end];
            if let Some((_, default)) = expr.split_once(":-").or_else(|| expr.split_once('-')) {
                out.push_str(default);
            }
            rest = body.get(end + 1..).unwrap_or("");
        } else {
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            rest = &tail[end..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether `service` runs the ragpipe image (built from this repository's Dockerfile).
fn runs_ragpipe(service: &Value) -> bool {
    service.get("build").is_some() || text_at(service, &["image"]).is_some_and(|image| image.contains("ragpipe"))
}

fn compose_workloads(doc: &Value, problems: &mut Problems) -> Vec<Workload> {
    let default_cmd = dockerfile().exec_form("CMD").unwrap_or_default();
    let mut workloads = Vec::new();
    for (name, service) in compose_services(doc) {
        if !runs_ragpipe(&service) {
            continue;
        }
        let place = format!("{COMPOSE} service `{name}`");
        if let Some(entrypoint) = service.get("entrypoint") {
            problems.check(words(entrypoint).first().is_some_and(|e| e.ends_with("ragpipe")), &place, || {
                format!("`entrypoint` {:?} does not run ragpipe", words(entrypoint))
            });
        }
        let args = service.get("command").map(words).unwrap_or_else(|| default_cmd.clone());
        let mut env = BTreeMap::new();
        match service.get("environment") {
            Some(Value::Mapping(map)) => {
                for (key, value) in map {
                    let (Some(key), raw) = (text(key), text(value).unwrap_or_default()) else { continue };
                    env.insert(key, EnvValue::Literal { value: interpolate(&raw), raw });
                }
            }
            Some(Value::Sequence(items)) => {
                for item in items.iter().filter_map(text) {
                    let (key, raw) = item.split_once('=').unwrap_or((item.as_str(), ""));
                    env.insert(key.to_owned(), EnvValue::Literal { value: interpolate(raw), raw: raw.to_owned() });
                }
            }
            _ => {}
        }
        workloads.push(Workload { place, component: name, args, env, container: service, pod: None });
    }
    workloads
}

/// The pod spec of a workload object (Deployment, StatefulSet, DaemonSet, Job, CronJob).
fn pod_spec(doc: &K8sDoc) -> Option<&Value> {
    match doc.kind().as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicaSet" => {
            at(&doc.value, &["spec", "template", "spec"])
        }
        "CronJob" => at(&doc.value, &["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

fn pod_labels(doc: &K8sDoc) -> BTreeMap<String, String> {
    let path: &[&str] = if doc.kind() == "CronJob" {
        &["spec", "jobTemplate", "spec", "template", "metadata", "labels"]
    } else {
        &["spec", "template", "metadata", "labels"]
    };
    mapping_of_text(at(&doc.value, path))
}

fn mapping_of_text(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| m.iter().filter_map(|(k, v)| Some((text(k)?, text(v)?))).collect())
        .unwrap_or_default()
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|key| spec.get(*key).and_then(Value::as_sequence))
        .flatten()
        .collect()
}

fn is_ragpipe_container(container: &Value) -> bool {
    text_at(container, &["image"]).is_some_and(|image| image.contains("ragpipe"))
}

/// Every ragpipe container of every workload object, with its environment resolved against the
/// ConfigMaps in `docs` (`envFrom`).
fn k8s_workloads(docs: &[K8sDoc], problems: &mut Problems) -> Vec<(usize, Workload)> {
    let config_maps: BTreeMap<String, BTreeMap<String, String>> = docs
        .iter()
        .filter(|d| d.kind() == "ConfigMap")
        .map(|d| (d.name(), mapping_of_text(d.value.get("data"))))
        .collect();
    let default_cmd = dockerfile().exec_form("CMD").unwrap_or_default();
    let mut workloads = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let Some(spec) = pod_spec(doc) else { continue };
        let component = pod_labels(doc).get("app.kubernetes.io/component").cloned().unwrap_or_default();
        for container in containers(spec).into_iter().filter(|c| is_ragpipe_container(c)) {
            let cname = text_at(container, &["name"]).unwrap_or_default();
            let place = format!("{} container `{cname}`", doc.label());
            if let Some(command) = container.get("command") {
                problems.check(words(command).first().is_some_and(|c| c.ends_with("ragpipe")), &place, || {
                    format!("`command` {:?} replaces the ragpipe entrypoint; use `args`", words(command))
                });
            }
            let args = container.get("args").map(words).unwrap_or_else(|| default_cmd.clone());
            let mut env = BTreeMap::new();
            for source in container.get("envFrom").and_then(Value::as_sequence).into_iter().flatten() {
                if let Some(name) = text_at(source, &["configMapRef", "name"]) {
                    match config_maps.get(&name) {
                        Some(data) => {
                            for (key, value) in data {
                                let literal = EnvValue::Literal { raw: value.clone(), value: value.clone() };
                                env.insert(key.clone(), literal);
                            }
                        }
                        None => {
                            problems.push(&place, format!("envFrom names ConfigMap `{name}`, which no file defines"))
                        }
                    }
                } else if source.get("secretRef").is_some() {
                    problems.push(&place, "envFrom secretRef: reference each secret key by name (env secretKeyRef)");
                }
            }
            for var in container.get("env").and_then(Value::as_sequence).into_iter().flatten() {
                let Some(name) = text_at(var, &["name"]) else { continue };
                let value = if let Some(value) = var.get("value") {
                    let value = text(value).unwrap_or_default();
                    EnvValue::Literal { raw: value.clone(), value }
                } else if let Some(secret) = at(var, &["valueFrom", "secretKeyRef"]) {
                    EnvValue::Secret {
                        name: text_at(secret, &["name"]).unwrap_or_default(),
                        key: text_at(secret, &["key"]).unwrap_or_default(),
                    }
                } else if let Some(map) = at(var, &["valueFrom", "configMapKeyRef"]) {
                    let (cm, key) = (text_at(map, &["name"]).unwrap_or_default(), text_at(map, &["key"]));
                    match config_maps.get(&cm).and_then(|data| data.get(&key.clone().unwrap_or_default())) {
                        Some(value) => EnvValue::Literal { raw: value.clone(), value: value.clone() },
                        None => {
                            problems.push(&place, format!("{name}: configMapKeyRef `{cm}`/{key:?} is not defined"));
                            continue;
                        }
                    }
                } else {
                    EnvValue::Computed
                };
                env.insert(name, value);
            }
            let (container, pod) = (container.clone(), Some(spec.clone()));
            workloads.push((index, Workload { place, component: component.clone(), args, env, container, pod }));
        }
    }
    workloads
}

/// The image on its own: its ENV over workers.toml.
fn image_workload() -> Workload {
    Workload {
        place: DOCKERFILE.into(),
        component: String::new(),
        args: Vec::new(),
        env: BTreeMap::new(),
        container: Value::Null,
        pod: None,
    }
}

/// The placeholder values of the example Secret, by (secret name, key).
fn secret_placeholders() -> BTreeMap<(String, String), String> {
    let doc: Value = serde_yaml::from_str(&read(SECRET_EXAMPLE)).expect("the example Secret is YAML");
    let name = text_at(&doc, &["metadata", "name"]).expect("the example Secret has a name");
    mapping_of_text(doc.get("stringData")).into_iter().map(|(key, value)| ((name.clone(), key), value)).collect()
}

/// The environment a workload's process sees: the image's `ENV`, then the workload's own
/// variables; secrets stand in with their example placeholders, computed values with "2".
fn effective_env(workload: &Workload, problems: &mut Problems) -> BTreeMap<String, String> {
    let placeholders = secret_placeholders();
    let mut env = dockerfile().env();
    for (name, value) in &workload.env {
        let value = match value {
            EnvValue::Literal { value, .. } => value.clone(),
            EnvValue::Computed => "2".to_owned(),
            EnvValue::Secret { name: secret, key } => match placeholders.get(&(secret.clone(), key.clone())) {
                Some(value) => value.clone(),
                None => {
                    problems.push(
                        &workload.place,
                        format!("{name}: Secret `{secret}` key `{key}` is not documented in {SECRET_EXAMPLE}"),
                    );
                    continue;
                }
            },
        };
        env.insert(name.clone(), value);
    }
    env
}

// ---------------------------------------------------------------------------------------------
// The code's view: command line and settings
// ---------------------------------------------------------------------------------------------

/// Parses `args` (after the entrypoint) with the real command line: the subcommand and, for
/// `worker`, the roles it runs (all of them when none is named).
fn parse_command(args: &[String]) -> Result<(String, Vec<Role>), String> {
    let argv = std::iter::once("ragpipe".to_owned()).chain(args.iter().cloned());
    let matches = Cli::command().try_get_matches_from(argv).map_err(|e| e.to_string().trim().to_owned())?;
    let subcommand = matches.subcommand_name().unwrap_or_default().to_owned();
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let roles = match cli.command {
        Command::Worker(worker) if worker.roles.is_empty() => Role::value_variants().to_vec(),
        Command::Worker(worker) => worker.roles,
        _ => Vec::new(),
    };
    Ok((subcommand, roles))
}

/// The values given to `--role` (`--role x`, `--role=x`, comma-separated).
fn role_values(args: &[String]) -> Vec<String> {
    let mut values = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let given = if arg == "--role" { iter.next().cloned() } else { arg.strip_prefix("--role=").map(str::to_owned) };
        values.extend(given.into_iter().flat_map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>()));
    }
    values
}

fn role_name(role: Role) -> String {
    role.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

/// The settings `env` describes, as `Settings::load` reads them: workers.toml, then
/// `RAGPIPE__SECTION__KEY` variables, unknown keys and ill-typed values rejected. Not validated.
fn deserialize_settings(env: &BTreeMap<String, String>) -> Result<Settings, String> {
    let vars: config::Map<String, String> =
        env.iter().filter(|(k, _)| k.starts_with("RAGPIPE__")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let source = config::Environment::with_prefix("RAGPIPE")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(vars));
    let settings: Settings = config::Config::builder()
        .add_source(config::File::from(root().join("workers.toml")).required(true))
        .add_source(source)
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| e.to_string())?;
    Ok(settings)
}

/// The settings a process with `env` runs with: as `Settings::load` does it, API keys from their
/// own variables included, then validated.
fn load_settings(env: &BTreeMap<String, String>) -> Result<Settings, String> {
    let mut settings = deserialize_settings(env)?;
    let key = |name: Option<&str>| {
        name.and_then(|name| env.get(name))
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
            .map(secrecy::SecretString::from)
    };
    settings.embedder.api_key = key(settings.embedder.api_key_env());
    settings.llm.api_key = key(settings.llm.api_key_env());
    settings.validate().map_err(|e| e.to_string())?;
    Ok(settings)
}

fn settings_of(workload: &Workload, problems: &mut Problems) -> Option<Settings> {
    let env = effective_env(workload, problems);
    match load_settings(&env) {
        Ok(settings) => Some(settings),
        Err(error) => {
            problems.push(&workload.place, format!("its environment does not load: {error}"));
            None
        }
    }
}

/// Checks one variable's name against the settings: `RAGPIPE__SECTION__KEY` naming a key the code
/// has (loaded alone, over workers.toml), or another variable the code reads.
fn check_env_name(place: &str, name: &str, value: &str, problems: &mut Problems) {
    if let Some(rest) = name.strip_prefix("RAGPIPE__") {
        let parts: Vec<&str> = rest.split("__").collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            problems.push(place, format!("{name}: not of the form RAGPIPE__SECTION__KEY"));
            return;
        }
        // Alone, over workers.toml: the key must exist and the value have its type (whether it
        // fits the other values is the whole environment's check).
        let single = BTreeMap::from([(name.to_owned(), value.to_owned())]);
        if let Err(error) = deserialize_settings(&single) {
            let (section, key) = (parts[0].to_lowercase(), parts[1].to_lowercase());
            problems.push(place, format!("{name}={value:?} is not a valid `[{section}] {key}` setting: {error}"));
        }
    } else if name.starts_with("RAGPIPE") && name != CONFIG_ENV {
        problems.push(place, format!("{name}: ragpipe reads {CONFIG_ENV} and RAGPIPE__SECTION__KEY, not this"));
    }
}

/// Seconds a stopping worker of `roles` may need before it exits: the longest drain of its
/// roles, then the snapshots.
fn drain_secs(settings: &Settings, roles: &[Role]) -> u64 {
    let longest = roles
        .iter()
        .map(|role| match role {
            // One document in flight: extraction, then embedding with retries (an attempt may
            // start just before max_elapsed_secs), then a pooled connection for the persist.
            Role::Ingest => {
                settings.extract.timeout_secs
                    + settings.embedder.max_elapsed_secs
                    + settings.embedder.request_timeout_secs
                    + settings.database.acquire_timeout_secs
            }
            // Queries in flight end by their deadline.
            Role::Query => settings.query.deadline_ms.div_ceil(1000),
            // Sleeps between triggers (a rebuild cut off is taken over after its lease).
            Role::Scheduler => 0,
        })
        .max()
        .unwrap_or(0);
    longest + SNAPSHOT_MARGIN_SECS
}

/// Names that hold credentials (the last `__` segment has a URL/KEY/PASSWORD/... word), except
/// settings that only look like it.
fn secret_like(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let last = upper.rsplit("__").next().unwrap_or(&upper);
    const NOT_SECRET: [&str; 3] = ["BASE_URL", "KEY_PREFIX", "AZURE_ENDPOINT"];
    if NOT_SECRET.contains(&last) {
        return false;
    }
    last.split('_').any(|word| ["URL", "KEY", "PASSWORD", "PASS", "SECRET", "TOKEN", "CREDENTIALS"].contains(&word))
}

/// `http://host:port/path` URLs among a healthcheck's words.
fn urls(words: &[String]) -> Vec<url::Url> {
    words
        .iter()
        .flat_map(|w| w.split_whitespace())
        .filter_map(|w| w.trim_matches(|c| c == '"' || c == '\'').parse::<url::Url>().ok())
        .filter(|u| u.scheme() == "http" || u.scheme() == "https")
        .collect()
}

/// Compose/Go durations: `90s`, `6m`, `1m30s`, `1h`.
fn duration_secs(text: &str) -> Option<u64> {
    let mut total = 0.0;
    let mut number = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push('s');
            chars.next();
        }
        let value: f64 = std::mem::take(&mut number).parse().ok()?;
        total += value
            * match unit.as_str() {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 0.001,
                _ => return None,
            };
    }
    if !number.is_empty() {
        total += number.parse::<f64>().ok()?;
    }
    Some(total.ceil() as u64)
}

/// Bytes of a size: Redis (`2gb` = 2 GiB, `2g` = 2·10⁹), Docker (`2560M`, binary) or Kubernetes
/// (`4Gi`, `512M`).
fn bytes(text: &str, redis: bool) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let k: f64 = 1024.0;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" if redis => 1e3,
        "m" if redis => 1e6,
        "g" if redis => 1e9,
        "kb" | "k" | "ki" => k,
        "mb" | "m" | "mi" => k * k,
        "gb" | "g" | "gi" => k * k * k,
        "tb" | "t" | "ti" => k * k * k * k,
        _ => return None,
    };
    Some((number * factor) as u64)
}

/// A Kubernetes quantity as a number (cpu in cores, memory in bytes).
fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Some(milli) = text.strip_suffix('m') {
        return milli.parse::<f64>().ok().map(|m| m / 1000.0);
    }
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some(number * factor)
}

// ---------------------------------------------------------------------------------------------
// (a), (b): services, roles and subcommands
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_has_every_service_and_runs_real_subcommands_and_roles() {
    let mut problems = Problems::default();
    let doc = compose();
    let services: BTreeMap<String, Value> = compose_services(&doc).into_iter().collect();
    for name in ["rabbitmq", "postgres", "redis", "migrate", "ingest", "query", "scheduler"] {
        problems.check(services.contains_key(name), COMPOSE, || format!("service `{name}` is missing"));
    }
    if let Some(ingest) = services.get("ingest") {
        let replicas = at(ingest, &["deploy", "replicas"]).and_then(Value::as_u64).unwrap_or(1);
        problems.check(replicas > 1, &format!("{COMPOSE} service `ingest`"), || {
            format!("deploy.replicas is {replicas}; ingest workers are competing consumers, run more than one")
        });
    }
    // depends_on conditions: a `service_healthy` dependency needs a healthcheck; workers start
    // after `migrate` completed.
    for (name, service) in &services {
        let place = format!("{COMPOSE} service `{name}`");
        for (dep, condition) in service.get("depends_on").and_then(Value::as_mapping).into_iter().flatten() {
            let dep = text(dep).unwrap_or_default();
            let condition = text_at(condition, &["condition"]).unwrap_or_default();
            match services.get(&dep) {
                None => problems.push(&place, format!("depends_on `{dep}`, which is not a service")),
                Some(target) if condition == "service_healthy" => {
                    let has = target.get("healthcheck").is_some_and(|h| h.get("disable") != Some(&Value::Bool(true)));
                    problems
                        .check(has, &place, || format!("waits for `{dep}` to be healthy, but it has no healthcheck"));
                }
                Some(_) => {}
            }
        }
    }
    let workloads = compose_workloads(&doc, &mut problems);
    let mut roles_run = BTreeSet::new();
    for workload in &workloads {
        check_command(workload, &mut problems, &mut roles_run);
        let parsed = parse_command(&workload.args).ok();
        if parsed.as_ref().is_some_and(|(sub, _)| sub == "worker") {
            let deps = services.get(&workload.component).and_then(|s| s.get("depends_on"));
            let migrate = deps.and_then(|d| text_at(d, &["migrate", "condition"]));
            problems.check(migrate.as_deref() == Some("service_completed_successfully"), &workload.place, || {
                "must depend on `migrate` with condition service_completed_successfully".into()
            });
        }
    }
    problems.check(workloads.iter().any(|w| w.args.first().is_some_and(|a| a == "migrate")), COMPOSE, || {
        "no service runs `ragpipe migrate`".into()
    });
    for role in Role::value_variants() {
        problems.check(roles_run.contains(&role_name(*role)), COMPOSE, || {
            format!("no service runs the `{}` role", role_name(*role))
        });
    }
    problems.assert_none("docker-compose.yml against the command line");
}

/// The command line parses, every `--role` is a real role, and a worker named for a role runs
/// exactly that role.
fn check_command(workload: &Workload, problems: &mut Problems, roles_run: &mut BTreeSet<String>) {
    for value in role_values(&workload.args) {
        problems.check(<Role as ValueEnum>::from_str(&value, true).is_ok(), &workload.place, || {
            let known: Vec<String> = Role::value_variants().iter().map(|r| role_name(*r)).collect();
            format!("`--role {value}` is not a role (the code has: {})", known.join(", "))
        });
    }
    match parse_command(&workload.args) {
        Err(error) => {
            problems.push(&workload.place, format!("`ragpipe {}` does not parse: {error}", workload.args.join(" ")))
        }
        Ok((subcommand, roles)) => {
            roles_run.extend(roles.iter().map(|r| role_name(*r)));
            if let Ok(named) = <Role as ValueEnum>::from_str(&workload.component, true) {
                problems.check(roles == [named], &workload.place, || {
                    format!(
                        "is named for the `{}` role but runs {:?}",
                        workload.component,
                        roles.iter().map(|r| role_name(*r)).collect::<Vec<_>>()
                    )
                });
            }
            // The binary itself knows the subcommand.
            let status = Process::new(env!("CARGO_BIN_EXE_ragpipe")).args([subcommand.as_str(), "--help"]).output();
            problems.check(status.as_ref().is_ok_and(|o| o.status.success()), &workload.place, || {
                format!("`ragpipe {subcommand} --help` fails: {status:?}")
            });
        }
    }
}

#[test]
fn k8s_workloads_run_real_subcommands_and_roles() {
    let mut problems = Problems::default();
    let docs = k8s_docs(&mut problems);
    let workloads = k8s_workloads(&docs, &mut problems);
    let mut roles_run = BTreeSet::new();
    for (index, workload) in &workloads {
        let mut these = BTreeSet::new();
        check_command(workload, &mut problems, &mut these);
        if docs[*index].kind() == "Deployment" {
            roles_run.extend(these);
        }
    }
    problems.check(workloads.iter().any(|(_, w)| w.args.first().is_some_and(|a| a == "migrate")), K8S_DIR, || {
        "no Job runs `ragpipe migrate`".into()
    });
    for role in Role::value_variants() {
        problems.check(roles_run.contains(&role_name(*role)), K8S_DIR, || {
            format!("no Deployment runs the `{}` role", role_name(*role))
        });
    }
    problems.assert_none("ops/k8s against the command line");
}

// ---------------------------------------------------------------------------------------------
// (c): every RAGPIPE__ variable is a setting
// ---------------------------------------------------------------------------------------------

#[test]
fn every_ragpipe_variable_is_a_setting_the_code_has() {
    // The check itself rejects what the code does not know.
    let bogus = BTreeMap::from([("RAGPIPE__HTTP__NO_SUCH_KEY".to_owned(), "1".to_owned())]);
    assert!(deserialize_settings(&bogus).is_err(), "the settings loader must reject unknown keys");
    assert!(load_settings(&BTreeMap::new()).is_ok(), "workers.toml alone loads");

    let mut problems = Problems::default();
    // Image ENV.
    for (name, value) in dockerfile().env() {
        check_env_name(&format!("{DOCKERFILE} ENV"), &name, &value, &mut problems);
    }
    // ConfigMaps: every key becomes a variable through envFrom.
    let docs = k8s_docs(&mut problems);
    for doc in docs.iter().filter(|d| d.kind() == "ConfigMap") {
        for (name, value) in mapping_of_text(doc.value.get("data")) {
            check_env_name(&doc.label(), &name, &value, &mut problems);
        }
    }
    // Workloads: each variable alone, then the whole environment through the real loader.
    let compose = compose();
    let mut workloads = compose_workloads(&compose, &mut problems);
    workloads.extend(k8s_workloads(&docs, &mut problems).into_iter().map(|(_, w)| w));
    let mut environments: Vec<(BTreeMap<String, String>, String)> = Vec::new();
    for workload in &workloads {
        for (name, value) in &workload.env {
            let placeholder = match value {
                EnvValue::Literal { value, .. } => value.clone(),
                _ => continue,
            };
            check_env_name(&workload.place, name, &placeholder, &mut problems);
        }
        let env = effective_env(workload, &mut problems);
        if let Err(error) = load_settings(&env) {
            problems.push(&workload.place, format!("its environment does not load: {error}"));
        }
        if !environments.iter().any(|(e, _)| *e == env) {
            environments.push((env, workload.place.clone()));
        }
    }
    // `Settings::load` itself (in the binary): each distinct environment, on a subcommand that
    // loads the settings and needs no server.
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = dir.path().join("sample.txt");
    std::fs::write(&sample, "Deployment files are checked against the code.\n").expect("write sample");
    for (env, place) in &environments {
        let output = Process::new(env!("CARGO_BIN_EXE_ragpipe"))
            .env_clear()
            .envs(env)
            .env(CONFIG_ENV, root().join("workers.toml"))
            .arg("chunk")
            .arg(&sample)
            .output()
            .expect("run ragpipe chunk");
        problems.check(output.status.success(), place, || {
            format!("ragpipe does not start with this environment: {}", String::from_utf8_lossy(&output.stderr).trim())
        });
    }
    problems.assert_none("RAGPIPE__ variables against the settings");
}

// ---------------------------------------------------------------------------------------------
// (d): probes on /health and /ready at the configured port; containers listen beyond loopback
// ---------------------------------------------------------------------------------------------

fn check_listening(place: &str, settings: &Settings, problems: &mut Problems) {
    problems.check(settings.http.enabled, place, || "http.enabled is false: no /health or /ready to probe".into());
    let loopback = ["127.0.0.1", "localhost", "::1"].contains(&settings.http.bind.as_str());
    problems.check(!loopback, place, || {
        format!(
            "http.bind is {} (the default is {}): probes from outside the container cannot connect; set RAGPIPE__HTTP__BIND=0.0.0.0",
            settings.http.bind,
            HttpSettings::default().bind
        )
    });
}

fn check_probe_url(place: &str, url: &url::Url, paths: &[&str], port: u16, problems: &mut Problems) {
    problems.check(paths.contains(&url.path()), place, || format!("probes {} (expected one of {paths:?})", url.path()));
    problems.check(url.port_or_known_default() == Some(port), place, || {
        format!("probes port {:?}, but http.port is {port}", url.port_or_known_default())
    });
}

#[test]
fn compose_and_image_health_checks_use_health_or_ready_on_the_http_port() {
    let mut problems = Problems::default();
    let doc = compose();
    let services: BTreeMap<String, Value> = compose_services(&doc).into_iter().collect();
    for workload in compose_workloads(&doc, &mut problems) {
        let Ok((subcommand, _)) = parse_command(&workload.args) else { continue };
        if subcommand != "worker" {
            continue;
        }
        let Some(settings) = settings_of(&workload, &mut problems) else { continue };
        check_listening(&workload.place, &settings, &mut problems);
        let test = services.get(&workload.component).and_then(|s| at(s, &["healthcheck", "test"])).map(words);
        let found = test.as_deref().map(urls).unwrap_or_default();
        problems.check(!found.is_empty(), &workload.place, || "has no healthcheck calling /health or /ready".into());
        for url in &found {
            check_probe_url(&workload.place, url, &["/health", "/ready"], settings.http.port, &mut problems);
        }
    }
    // The image: EXPOSE and HEALTHCHECK at the port its own environment configures.
    let image = dockerfile();
    let image_workload = image_workload();
    if let Some(settings) = settings_of(&image_workload, &mut problems) {
        check_listening(DOCKERFILE, &settings, &mut problems);
        let port = settings.http.port;
        let exposed: Vec<String> = image
            .runtime()
            .iter()
            .filter(|(k, _)| k == "EXPOSE")
            .flat_map(|(_, rest)| {
                rest.split_whitespace().map(|p| p.split('/').next().unwrap_or(p).to_owned()).collect::<Vec<_>>()
            })
            .collect();
        problems.check(exposed.contains(&port.to_string()), DOCKERFILE, || {
            format!("EXPOSE {exposed:?} does not include http.port {port}")
        });
        if let Some(healthcheck) = image.last("HEALTHCHECK") {
            let found = urls(&[healthcheck.replace(['[', ']', ','], " ")]);
            problems.check(!found.is_empty(), DOCKERFILE, || "HEALTHCHECK calls no http:// URL".into());
            for url in &found {
                check_probe_url(&format!("{DOCKERFILE} HEALTHCHECK"), url, &["/health", "/ready"], port, &mut problems);
            }
        }
    }
    problems.assert_none("health checks against the http settings");
}

// ---------------------------------------------------------------------------------------------
// (e): Redis runs ops/redis.conf, bounded with LRU eviction
// ---------------------------------------------------------------------------------------------

#[test]
fn redis_runs_ops_redis_conf_with_bounded_memory_and_lru() {
    let mut problems = Problems::default();
    let place = format!("{COMPOSE} service `redis`");
    let doc = compose();
    let services: BTreeMap<String, Value> = compose_services(&doc).into_iter().collect();
    let redis = services.get("redis").expect("docker-compose.yml has a redis service");
    // The file mounted from ops/redis.conf, and where.
    let mut mounted_at = None;
    for volume in redis.get("volumes").and_then(Value::as_sequence).into_iter().flatten() {
        let (source, target) = match volume {
            Value::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                (parts.first().map(|s| (*s).to_owned()), parts.get(1).map(|s| (*s).to_owned()))
            }
            long => (text_at(long, &["source"]), text_at(long, &["target"])),
        };
        if let (Some(source), Some(target)) = (source, target)
            && root().join(&source).canonicalize().ok() == root().join("ops/redis.conf").canonicalize().ok()
        {
            mounted_at = Some(target);
        }
    }
    match &mounted_at {
        None => problems.push(&place, "does not mount ./ops/redis.conf"),
        Some(target) => {
            let command = redis.get("command").map(words).unwrap_or_default();
            problems.check(command.iter().any(|w| w == target), &place, || {
                format!("mounts ops/redis.conf at {target} but its command {command:?} does not use it")
            });
        }
    }
    // The file: maxmemory set, allkeys-lru.
    let conf = read("ops/redis.conf");
    let directive = |name: &str| {
        conf.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .next_back()
    };
    let maxmemory = directive("maxmemory").and_then(|v| bytes(&v, true));
    problems.check(maxmemory.is_some_and(|b| b > 0), "ops/redis.conf", || {
        format!("maxmemory must bound memory, found {:?}", directive("maxmemory"))
    });
    problems.check(directive("maxmemory-policy").as_deref() == Some("allkeys-lru"), "ops/redis.conf", || {
        format!("maxmemory-policy must be allkeys-lru, found {:?}", directive("maxmemory-policy"))
    });
    // A container memory limit must leave room above maxmemory.
    if let (Some(limit), Some(maxmemory)) =
        (text_at(redis, &["deploy", "resources", "limits", "memory"]).and_then(|l| bytes(&l, false)), maxmemory)
    {
        problems.check(limit > maxmemory, &place, || {
            format!("memory limit {limit} bytes is not above maxmemory {maxmemory} bytes")
        });
    }
    problems.assert_none("Redis against ops/redis.conf");
}

// ---------------------------------------------------------------------------------------------
// (f): KEDA scales ingest on the queue the ingest workers consume
// ---------------------------------------------------------------------------------------------

#[test]
fn keda_scales_ingest_on_the_ingest_queue() {
    let mut problems = Problems::default();
    let docs = k8s_docs(&mut problems);
    let workloads = k8s_workloads(&docs, &mut problems);
    let scaled: Vec<&K8sDoc> = docs.iter().filter(|d| d.kind() == "ScaledObject").collect();
    assert!(!scaled.is_empty(), "no KEDA ScaledObject under {K8S_DIR}");
    let default_queue = Settings::default().broker.ingest_queue;
    for doc in scaled {
        let place = doc.label();
        let target = text_at(&doc.value, &["spec", "scaleTargetRef", "name"]).unwrap_or_default();
        let Some((_, workload)) =
            workloads.iter().find(|(i, _)| docs[*i].kind() == "Deployment" && docs[*i].name() == target)
        else {
            problems.push(&place, format!("scaleTargetRef `{target}` is not a Deployment under {K8S_DIR}"));
            continue;
        };
        let roles = parse_command(&workload.args).map(|(_, r)| r).unwrap_or_default();
        problems.check(roles.contains(&Role::Ingest), &place, || {
            format!("scales `{target}`, which does not run the ingest role")
        });
        let Some(settings) = settings_of(workload, &mut problems) else { continue };
        let triggers = at(&doc.value, &["spec", "triggers"]).and_then(Value::as_sequence).cloned().unwrap_or_default();
        let rabbit: Vec<&Value> =
            triggers.iter().filter(|t| text_at(t, &["type"]).as_deref() == Some("rabbitmq")).collect();
        problems.check(!rabbit.is_empty(), &place, || "has no rabbitmq trigger".into());
        for trigger in rabbit {
            let queue = text_at(trigger, &["metadata", "queueName"]).unwrap_or_default();
            let overridden = workload.env.contains_key("RAGPIPE__BROKER__INGEST_QUEUE");
            problems.check(queue == settings.broker.ingest_queue, &place, || {
                format!(
                    "queueName `{queue}`, but `{target}` consumes `{}` ([broker] ingest_queue; code default `{default_queue}`{})",
                    settings.broker.ingest_queue,
                    if overridden { ", overridden by RAGPIPE__BROKER__INGEST_QUEUE" } else { "" }
                )
            });
            // The broker URL holds a password: only through the workers' own secret reference.
            problems.check(at(trigger, &["metadata", "host"]).is_none(), &place, || {
                "metadata.host would put the broker's credentials in the manifest; use hostFromEnv or a TriggerAuthentication".into()
            });
            if let Some(from_env) = text_at(trigger, &["metadata", "hostFromEnv"]) {
                let broker_url = matches!(workload.env.get(&from_env), Some(EnvValue::Secret { .. }));
                problems.check(broker_url && from_env == "RAGPIPE__BROKER__URL", &place, || {
                    format!("hostFromEnv `{from_env}` is not the target's RAGPIPE__BROKER__URL secret reference")
                });
            } else {
                problems.check(trigger.get("authenticationRef").is_some(), &place, || {
                    "the trigger has neither hostFromEnv nor authenticationRef".into()
                });
            }
        }
    }
    problems.assert_none("KEDA against the broker settings");
}

// ---------------------------------------------------------------------------------------------
// (g): Kubernetes workloads: probes, resources, secrets by reference, grace, scaling objects
// ---------------------------------------------------------------------------------------------

/// A probe's `httpGet` path and port (a named port resolved through the container's ports).
fn probe(container: &Value, which: &str) -> Option<(String, Option<u16>)> {
    let get = at(container, &[which, "httpGet"])?;
    let path = text_at(get, &["path"]).unwrap_or_default();
    let port = match get.get("port") {
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Some(Value::String(name)) => named_port(container, name),
        _ => None,
    };
    Some((path, port))
}

fn named_port(container: &Value, name: &str) -> Option<u16> {
    container
        .get("ports")
        .and_then(Value::as_sequence)?
        .iter()
        .find(|p| text_at(p, &["name"]).as_deref() == Some(name))
        .and_then(|p| p.get("containerPort"))
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
}

fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn k8s_workloads_probe_limit_and_reference_secrets() {
    let mut problems = Problems::default();
    let docs = k8s_docs(&mut problems);
    let namespace = docs.iter().find(|d| d.kind() == "Namespace").map(K8sDoc::name);

    // Every document is a named object, in the one namespace; Secrets only as examples.
    for doc in &docs {
        problems.check(text_at(&doc.value, &["apiVersion"]).is_some() && !doc.kind().is_empty(), &doc.place, || {
            "lacks apiVersion or kind".into()
        });
        problems.check(!doc.name().is_empty(), &doc.place, || "lacks metadata.name".into());
        if let (Some(ns), false) = (&namespace, doc.kind() == "Namespace") {
            let own = text_at(&doc.value, &["metadata", "namespace"]);
            problems.check(own.as_deref() == Some(ns.as_str()), &doc.label(), || {
                format!("metadata.namespace is {own:?}, not `{ns}`")
            });
        }
        if doc.kind() == "Secret" {
            problems.check(
                doc.file.ends_with(".example.yaml") && doc.file.contains("/examples/"),
                &doc.label(),
                || format!("a Secret with values must not live here; keep only {SECRET_EXAMPLE} (placeholders)"),
            );
            for (key, value) in mapping_of_text(doc.value.get("stringData")) {
                problems.check(value.contains("CHANGE-ME"), &doc.label(), || {
                    format!("key `{key}` must be a placeholder containing CHANGE-ME")
                });
            }
            problems
                .check(doc.value.get("data").is_none(), &doc.label(), || "use placeholder stringData, not data".into());
        }
        if doc.kind() == "ConfigMap" {
            for key in mapping_of_text(doc.value.get("data")).keys() {
                problems.check(!secret_like(key), &doc.label(), || {
                    format!("`{key}` looks like a credential: put it in the Secret and reference it")
                });
            }
        }
    }

    let example = secret_placeholders();
    let workloads = k8s_workloads(&docs, &mut problems);
    let mut pods: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (index, workload) in &workloads {
        let doc = &docs[*index];
        let spec = workload.pod.as_ref().expect("a Kubernetes workload has a pod spec");
        let container = &workload.container;
        let place = &workload.place;

        // Secrets by reference only, each key documented in the example.
        for (name, value) in &workload.env {
            match value {
                EnvValue::Literal { .. } if secret_like(name) => {
                    problems.push(place, format!("{name} is a credential given as a value; use valueFrom.secretKeyRef"))
                }
                EnvValue::Secret { name: secret, key } => {
                    problems.check(example.contains_key(&(secret.clone(), key.clone())), place, || {
                        format!("{name}: Secret `{secret}` key `{key}` is not in {SECRET_EXAMPLE}")
                    })
                }
                _ => {}
            }
        }

        // Resources: requests and limits of cpu and memory, requests within limits.
        for resource in ["cpu", "memory"] {
            let request = text_at(container, &["resources", "requests", resource]);
            let limit = text_at(container, &["resources", "limits", resource]);
            problems.check(request.is_some() && limit.is_some(), place, || {
                format!("resources.requests.{resource} and resources.limits.{resource} must both be set")
            });
            if let (Some(request), Some(limit)) =
                (request.as_deref().and_then(quantity), limit.as_deref().and_then(quantity))
            {
                problems.check(request <= limit, place, || format!("requests.{resource} exceeds limits.{resource}"));
            }
        }

        let Ok((subcommand, roles)) = parse_command(&workload.args) else { continue };
        if subcommand != "worker" {
            continue;
        }
        problems.check(doc.kind() == "Deployment", place, || "workers run as Deployments".into());
        pods.insert(doc.name(), pod_labels(doc));
        let Some(settings) = settings_of(workload, &mut problems) else { continue };
        check_listening(place, &settings, &mut problems);
        let port = settings.http.port;

        // Probes: liveness /health, readiness /ready, on http.port.
        for (which, expected) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
            match probe(container, which) {
                None => problems.push(place, format!("{which} must be an httpGet on {expected}")),
                Some((path, probe_port)) => {
                    problems.check(path == expected, place, || format!("{which} probes {path}, expected {expected}"));
                    problems.check(probe_port == Some(port), place, || {
                        format!("{which} probes port {probe_port:?}, but http.port is {port}")
                    });
                }
            }
        }
        if let Some((path, probe_port)) = probe(container, "startupProbe") {
            problems.check(path == "/health" || path == "/ready", place, || format!("startupProbe probes {path}"));
            problems.check(probe_port == Some(port), place, || {
                format!("startupProbe probes port {probe_port:?}, not {port}")
            });
        }

        // Prometheus scrapes http.port at /metrics.
        let annotations = mapping_of_text(at(&doc.value, &["spec", "template", "metadata", "annotations"]));
        problems.check(annotations.get("prometheus.io/scrape").map(String::as_str) == Some("true"), place, || {
            "pod annotation prometheus.io/scrape must be \"true\"".into()
        });
        problems.check(annotations.get("prometheus.io/port") == Some(&port.to_string()), place, || {
            format!(
                "pod annotation prometheus.io/port is {:?}, but http.port is {port}",
                annotations.get("prometheus.io/port")
            )
        });
        problems.check(annotations.get("prometheus.io/path").map(String::as_str) == Some("/metrics"), place, || {
            "pod annotation prometheus.io/path must be /metrics".into()
        });

        // Stopping: longer than the drain.
        let grace =
            at(spec, &["terminationGracePeriodSeconds"]).and_then(Value::as_u64).unwrap_or(K8S_DEFAULT_GRACE_SECS);
        let drain = drain_secs(&settings, &roles);
        problems.check(grace >= drain, place, || {
            format!("terminationGracePeriodSeconds {grace} is shorter than the drain of its roles ({drain} s from the settings)")
        });

        // Replicas: query horizontally (at least two), one scheduler.
        let replicas = at(&doc.value, &["spec", "replicas"]).and_then(Value::as_u64).unwrap_or(1);
        if roles == [Role::Query] {
            problems.check(replicas >= 2, place, || format!("replicas {replicas}: run at least two query workers"));
        }
        if roles == [Role::Scheduler] {
            problems.check(replicas == 1, place, || format!("replicas {replicas}: one scheduler is enough"));
        }
    }

    // Compose's workers stop within their drain too.
    let compose = compose();
    let services: BTreeMap<String, Value> = compose_services(&compose).into_iter().collect();
    for workload in compose_workloads(&compose, &mut problems) {
        let Ok((subcommand, roles)) = parse_command(&workload.args) else { continue };
        if subcommand != "worker" {
            continue;
        }
        let Some(settings) = settings_of(&workload, &mut problems) else { continue };
        let grace = services
            .get(&workload.component)
            .and_then(|s| text_at(s, &["stop_grace_period"]))
            .map_or(Some(COMPOSE_DEFAULT_GRACE_SECS), |g| duration_secs(&g));
        let drain = drain_secs(&settings, &roles);
        problems.check(grace.is_some_and(|g| g >= drain), &workload.place, || {
            format!(
                "stop_grace_period {grace:?} s is shorter than the drain of its roles ({drain} s from the settings)"
            )
        });
    }

    // Scaling and disruption objects point at the workers.
    let role_pods = |role: Role| -> Vec<(String, BTreeMap<String, String>)> {
        workloads
            .iter()
            .filter(|(i, w)| {
                docs[*i].kind() == "Deployment" && parse_command(&w.args).is_ok_and(|(_, roles)| roles == [role])
            })
            .map(|(i, _)| (docs[*i].name(), pod_labels(&docs[*i])))
            .collect()
    };
    let query = role_pods(Role::Query);
    let ingest = role_pods(Role::Ingest);
    let hpas: Vec<&K8sDoc> = docs.iter().filter(|d| d.kind() == "HorizontalPodAutoscaler").collect();
    problems.check(
        hpas.iter().any(|h| {
            query.iter().any(|(n, _)| text_at(&h.value, &["spec", "scaleTargetRef", "name"]).as_ref() == Some(n))
        }),
        K8S_DIR,
        || "no HorizontalPodAutoscaler targets the query Deployment".into(),
    );
    for hpa in &hpas {
        let min = at(&hpa.value, &["spec", "minReplicas"]).and_then(Value::as_u64).unwrap_or(1);
        problems.check(min >= 2, &hpa.label(), || format!("minReplicas {min}: keep at least two query workers"));
    }
    let pdbs: Vec<(String, BTreeMap<String, String>)> = docs
        .iter()
        .filter(|d| d.kind() == "PodDisruptionBudget")
        .map(|d| (d.label(), mapping_of_text(at(&d.value, &["spec", "selector", "matchLabels"]))))
        .collect();
    for (what, deployments) in [("query", &query), ("ingest", &ingest)] {
        problems.check(!deployments.is_empty(), K8S_DIR, || format!("no Deployment runs only the {what} role"));
        for (name, labels) in deployments {
            problems.check(pdbs.iter().any(|(_, s)| selector_matches(s, labels)), K8S_DIR, || {
                format!("no PodDisruptionBudget selects the pods of Deployment `{name}`")
            });
        }
    }
    for (label, selector) in &pdbs {
        problems.check(pods.values().any(|labels| selector_matches(selector, labels)), label, || {
            "selects no worker pods".into()
        });
    }
    for service in docs.iter().filter(|d| d.kind() == "Service") {
        let selector = mapping_of_text(at(&service.value, &["spec", "selector"]));
        let target = workloads.iter().find(|(i, _)| selector_matches(&selector, &pod_labels(&docs[*i])));
        let Some((_, workload)) = target else {
            problems.push(&service.label(), "selects no ragpipe pods");
            continue;
        };
        let Some(settings) = settings_of(workload, &mut problems) else { continue };
        let container = &workload.container;
        for port in at(&service.value, &["spec", "ports"]).and_then(Value::as_sequence).into_iter().flatten() {
            let target = match port.get("targetPort").or_else(|| port.get("port")) {
                Some(Value::String(name)) => named_port(container, name),
                Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
                _ => None,
            };
            problems.check(target == Some(settings.http.port), &service.label(), || {
                format!("targets port {target:?}, but the pods' http.port is {}", settings.http.port)
            });
        }
    }
    problems.assert_none("ops/k8s workloads");
}

// ---------------------------------------------------------------------------------------------
// State on disk: index snapshots per process, never on a shared volume
// ---------------------------------------------------------------------------------------------

/// What holds a path inside a container.
#[derive(Debug, PartialEq)]
enum Mount {
    /// The container's own filesystem (no volume covers the path).
    ContainerFs,
    /// A volume only this container (or pod) sees: compose anonymous volume or tmpfs, k8s emptyDir.
    Private(String),
    /// A volume other containers can mount too: named or bind volume, PersistentVolumeClaim...
    Shared(String),
}

/// The deepest mount containing `path`.
fn mount_of(mounts: &[(PathBuf, Mount)], path: &Path) -> Mount {
    match mounts
        .iter()
        .filter(|(target, _)| path.starts_with(target))
        .max_by_key(|(target, _)| target.as_os_str().len())
    {
        None => Mount::ContainerFs,
        Some((_, Mount::Private(what))) => Mount::Private(what.clone()),
        Some((_, Mount::Shared(what))) => Mount::Shared(what.clone()),
        Some((_, Mount::ContainerFs)) => Mount::ContainerFs,
    }
}

fn compose_mounts(service: &Value) -> Vec<(PathBuf, Mount)> {
    let mut mounts = Vec::new();
    for volume in service.get("volumes").and_then(Value::as_sequence).into_iter().flatten() {
        match volume {
            Value::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                match parts.as_slice() {
                    [target] => mounts.push((PathBuf::from(target), Mount::Private("anonymous volume".into()))),
                    [source, target, ..] => {
                        mounts.push((PathBuf::from(target), Mount::Shared(format!("volume `{source}`"))))
                    }
                    [] => {}
                }
            }
            long => {
                let Some(target) = text_at(long, &["target"]) else { continue };
                let mount = match (text_at(long, &["type"]).as_deref(), text_at(long, &["source"])) {
                    (Some("tmpfs"), _) | (_, None) => Mount::Private("anonymous volume or tmpfs".into()),
                    (_, Some(source)) => Mount::Shared(format!("volume `{source}`")),
                };
                mounts.push((PathBuf::from(target), mount));
            }
        }
    }
    for tmpfs in service.get("tmpfs").map(words).unwrap_or_default() {
        mounts.push((PathBuf::from(tmpfs.split(':').next().unwrap_or_default()), Mount::Private("tmpfs".into())));
    }
    mounts
}

fn k8s_mounts(container: &Value, pod: &Value) -> Vec<(PathBuf, Mount)> {
    let volumes: BTreeMap<String, &Value> = pod
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|v| Some((text_at(v, &["name"])?, v)))
        .collect();
    let mut mounts = Vec::new();
    for mount in container.get("volumeMounts").and_then(Value::as_sequence).into_iter().flatten() {
        let (Some(name), Some(path)) = (text_at(mount, &["name"]), text_at(mount, &["mountPath"])) else { continue };
        let private = volumes.get(&name).is_some_and(|v| v.get("emptyDir").is_some() || v.get("ephemeral").is_some());
        let what = format!("volume `{name}`");
        mounts.push((PathBuf::from(path), if private { Mount::Private(what) } else { Mount::Shared(what) }));
    }
    mounts
}

#[test]
fn index_snapshots_stay_per_process_and_state_is_writable() {
    // Snapshot writers name their temp files by process id and remove the temp files of pids
    // that no longer run (src/index/snapshot.rs). Pids are per container: on a volume shared
    // between containers, one container would remove another's snapshot being written.
    let mut problems = Problems::default();
    let compose = compose();
    let mut workloads = compose_workloads(&compose, &mut problems);
    let docs = k8s_docs(&mut problems);
    workloads.extend(k8s_workloads(&docs, &mut problems).into_iter().map(|(_, w)| w));
    for workload in &workloads {
        let Ok((subcommand, roles)) = parse_command(&workload.args) else { continue };
        if subcommand != "worker" {
            continue;
        }
        let Some(settings) = settings_of(workload, &mut problems) else { continue };
        let (mounts, read_only_root) = match &workload.pod {
            None => {
                (compose_mounts(&workload.container), workload.container.get("read_only") == Some(&Value::Bool(true)))
            }
            Some(pod) => (
                k8s_mounts(&workload.container, pod),
                at(&workload.container, &["securityContext", "readOnlyRootFilesystem"]) == Some(&Value::Bool(true)),
            ),
        };
        let index_dir = settings.index_dir();
        match mount_of(&mounts, &index_dir) {
            Mount::Shared(what) => problems.push(
                &workload.place,
                format!(
                    "index snapshots ({}) are on {what}, which other containers can share; give each container its own \
                     (compose: an anonymous volume; Kubernetes: emptyDir)",
                    index_dir.display()
                ),
            ),
            Mount::ContainerFs if read_only_root => problems.push(
                &workload.place,
                format!(
                    "index snapshots ({}) are on the read-only root filesystem; mount a volume there",
                    index_dir.display()
                ),
            ),
            _ => {}
        }
        if roles.contains(&Role::Ingest) {
            let blobs = settings.storage.blob_root();
            problems.check(
                !(read_only_root && mount_of(&mounts, &blobs) == Mount::ContainerFs),
                &workload.place,
                || {
                    format!(
                        "the blob store ({}) is on the read-only root filesystem; mount a volume there",
                        blobs.display()
                    )
                },
            );
        }
    }
    problems.assert_none("state directories against the settings");
}

// ---------------------------------------------------------------------------------------------
// Compose secrets: passwords only through ${VAR} interpolation
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_takes_credentials_from_the_environment() {
    let mut problems = Problems::default();
    let doc = compose();
    for (name, service) in compose_services(&doc) {
        let place = format!("{COMPOSE} service `{name}`");
        for (key, raw) in mapping_of_text(service.get("environment")) {
            if !secret_like(&key) {
                continue;
            }
            // A URL's password, or a whole key/password, must come from ${VAR}.
            let secret_part = match raw.split_once("://") {
                Some((_, rest)) => rest
                    .split_once('@')
                    .and_then(|(userinfo, _)| userinfo.split_once(':'))
                    .map(|(_, password)| password.to_owned()),
                None => Some(raw.clone()),
            };
            if let Some(secret) = secret_part {
                problems.check(secret.is_empty() || secret.starts_with("${"), &place, || {
                    format!("{key} has a literal credential; take it from the environment (${{VAR:-default}})")
                });
            }
        }
    }
    problems.assert_none("docker-compose.yml credentials");
}

// ---------------------------------------------------------------------------------------------
// The image: build dependencies, the model where workers.toml expects it, the build context
// ---------------------------------------------------------------------------------------------

#[test]
fn image_bundles_what_the_code_needs() {
    let mut problems = Problems::default();
    let image = dockerfile();
    let all_text = read(DOCKERFILE);

    // The build stage installs what ops/build-deps.sh installs for FAISS (poppler-utils is only
    // the extraction benchmarks' reference), and builds with the lock file.
    let build = image.stage("build").map(|i| i.iter().map(|(k, r)| format!("{k} {r}")).collect::<Vec<_>>().join("\n"));
    let build = build.unwrap_or_else(|| {
        problems.push(DOCKERFILE, "no stage named `build`");
        String::new()
    });
    let deps = read("ops/build-deps.sh");
    let packages = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("packages=(").and_then(|r| r.strip_suffix(')')))
        .expect("ops/build-deps.sh lists packages=(...)");
    for package in packages.split_whitespace().filter(|p| *p != "poppler-utils") {
        problems.check(build.split_whitespace().any(|w| w == package), DOCKERFILE, || {
            format!("the build stage does not install `{package}` (ops/build-deps.sh needs it)")
        });
    }
    problems.check(build.contains("cargo build --release --locked"), DOCKERFILE, || {
        "the build stage must run `cargo build --release --locked`".into()
    });

    // Runtime: ragpipe as the entrypoint, a non-root user, the config file it is told to read.
    problems.check(image.exec_form("ENTRYPOINT") == Some(vec!["ragpipe".to_owned()]), DOCKERFILE, || {
        format!("ENTRYPOINT must be [\"ragpipe\"], found {:?}", image.last("ENTRYPOINT"))
    });
    let user = image.last("USER").unwrap_or_default();
    let uid = user.split(':').next().unwrap_or_default();
    problems.check(!uid.is_empty() && uid != "root" && uid != "0", DOCKERFILE, || {
        format!("the runtime stage must run as a non-root USER, found {user:?}")
    });
    let workdir = PathBuf::from(image.last("WORKDIR").unwrap_or_else(|| "/".into()));
    let env = image.env();
    let copies: Vec<(Option<String>, String, String)> = image
        .runtime()
        .iter()
        .filter(|(k, _)| k == "COPY")
        .filter_map(|(_, rest)| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let from = words.iter().find_map(|w| w.strip_prefix("--from=")).map(str::to_owned);
            let plain: Vec<&&str> = words.iter().filter(|w| !w.starts_with("--")).collect();
            match plain.as_slice() {
                [src, dst] => Some((from, (**src).to_owned(), (**dst).to_owned())),
                _ => None,
            }
        })
        .collect();
    let config_path = env.get(CONFIG_ENV).cloned();
    problems.check(
        copies
            .iter()
            .any(|(from, src, dst)| from.is_none() && src == "workers.toml" && Some(dst) == config_path.as_ref()),
        DOCKERFILE,
        || format!("workers.toml must be copied to ${CONFIG_ENV} ({config_path:?})"),
    );

    // The model lands where the image's settings look for it.
    let image_workload = image_workload();
    if let Some(settings) = settings_of(&image_workload, &mut problems)
        && settings.embedder.kind == EmbedderKind::Local
    {
        let model_dir = workdir.join(&settings.embedder.model_dir);
        let bundled = copies.iter().any(|(from, _, dst)| from.is_some() && Path::new(dst) == model_dir);
        problems.check(bundled, DOCKERFILE, || {
            format!(
                "embedder.model_dir resolves to {} in the image (WORKDIR {} + {}), but no COPY --from puts the model there",
                model_dir.display(),
                workdir.display(),
                settings.embedder.model_dir.display()
            )
        });
        problems.check(all_text.contains("ops/fetch-model.sh"), DOCKERFILE, || {
            "the model must be fetched as ops/fetch-model.sh does".into()
        });
    }

    // The build context keeps what the build reads.
    let ignore = read(".dockerignore");
    let patterns: Vec<String> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| l.trim_matches('/').to_owned())
        .collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "src/extract/pdf/data",
        "migrations",
        "benches",
        "workers.toml",
        "ops/fetch-model.sh",
    ] {
        for pattern in &patterns {
            problems.check(!ignored(pattern, needed), ".dockerignore", || {
                format!("`{pattern}` excludes {needed}, which the image build needs")
            });
        }
    }
    for wanted in ["target", ".git"] {
        problems
            .check(patterns.iter().any(|p| ignored(p, wanted)), ".dockerignore", || format!("should exclude {wanted}"));
    }
    problems.assert_none("the Dockerfile against the code");
}

/// Whether a .dockerignore pattern excludes `path` or one of its parents (`*` within a segment,
/// `**` across segments).
fn ignored(pattern: &str, path: &str) -> bool {
    fn segment(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                name.starts_with(head)
                    && (0..=name.len() - head.len())
                        .any(|i| name.is_char_boundary(head.len() + i) && segment(tail, &name[head.len() + i..]))
            }
        }
    }
    fn segments(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            (None, _) => true, // a parent matched: everything below is excluded
            (Some(&"**"), _) => (0..=path.len()).any(|skip| segments(&pattern[1..], &path[skip..])),
            (Some(_), None) => false,
            (Some(p), Some(name)) => segment(p, name) && segments(&pattern[1..], &path[1..]),
        }
    }
    let pattern: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = path.split('/').collect();
    !pattern.is_empty() && segments(&pattern, &path)
}

// ---------------------------------------------------------------------------------------------
// docker compose's own validation, where the client is installed
// ---------------------------------------------------------------------------------------------

#[test]
fn docker_compose_validates_the_file_when_installed() {
    let candidates: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    for candidate in candidates {
        let (program, first) = (candidate[0], &candidate[1..]);
        let version = Process::new(program).args(first).arg("version").output();
        if !version.is_ok_and(|o| o.status.success()) {
            continue;
        }
        let output = Process::new(program)
            .args(first)
            .args(["-f", COMPOSE, "config", "-q"])
            .current_dir(root())
            .output()
            .expect("run docker compose config");
        assert!(
            output.status.success(),
            "`{} -f {COMPOSE} config -q` rejects the file: {}",
            candidate.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    println!("skipped: neither `docker compose` nor `docker-compose` is installed");
}
