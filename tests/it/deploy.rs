//! The deployment files, checked without a container engine: every YAML file under `docker/` and `deploy/k8s/`
//! (multi-document) and the Grafana dashboard parse; the Compose stack's and the Kubernetes manifests' ports,
//! probes, mounts and tokens agree with the configuration pgsplit itself builds from them (the Compose file's
//! `pgsplit.toml`; for Kubernetes, `pgsplit check-config` run with each pgsplit container's arguments and
//! environment, Secrets and ConfigMaps resolved) and with pgsplit's default ports; and every metric name the
//! Grafana dashboard and the Prometheus configuration use is in the `/metrics` output of a real pgsplit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pgsplit::config::{Config, Flags, PgUrl, Source};
use pgsplit::proxy::Proxy;
use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use crate::admin::http_get;
use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_pgsplit");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.yml`/`.yaml` file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A YAML node as JSON, with merge keys (`<<: *anchor`) applied as Compose applies them: explicit keys win.
fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => {
            let mut out = Map::new();
            for (k, v) in h {
                if k.as_str() == Some("<<") {
                    let merged = match to_json(v) {
                        Value::Array(list) => list,
                        one => vec![one],
                    };
                    for m in merged {
                        let Value::Object(m) = m else {
                            panic!("a merge key's value must be a mapping: {v:?}")
                        };
                        for (mk, mv) in m {
                            out.entry(mk).or_insert(mv);
                        }
                    }
                }
            }
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) if s == "<<" => continue,
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("unsupported mapping key {other:?}"),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
        Yaml::Alias(_) | Yaml::BadValue => panic!("unresolved YAML node {y:?}"),
    }
}

/// The documents of a YAML file; panics naming the file when it is not well-formed or a document is empty.
fn load_yaml(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not well-formed YAML: {e}", path.display()));
    assert!(!docs.is_empty(), "{}: no document", path.display());
    docs.iter()
        .map(|d| {
            let v = to_json(d);
            assert!(
                v.is_object(),
                "{}: a document is not a mapping: {v}",
                path.display()
            );
            v
        })
        .collect()
}

fn load_one(path: &Path) -> Value {
    let mut docs = load_yaml(path);
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    docs.remove(0)
}

fn dashboard() -> Value {
    let path = repo().join("docker/grafana/dashboards/pgsplit.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every PromQL expression of the dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .into_iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target without expr")
                .to_string()
        })
        .collect()
}

/// The `pgsplit_*` metric names a text uses.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pgsplit_") {
        let preceded = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !preceded {
            out.insert(name.clone());
        }
        rest = &rest[i + name.len()..];
    }
    out
}

/// pgsplit's defaults, from the smallest valid configuration.
fn defaults() -> Config {
    Config::from_toml_str(
        "[primary]\nhost = \"db\"\n[[databases]]\nname = \"app\"\n[[users]]\nname = \"app\"\npassword = \"x\"\n",
        "<defaults>",
    )
    .expect("the smallest configuration")
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: a string expected, got {v}"))
}

/// A Compose service's bind mounts from the Compose file's folder: (source path, target in the container).
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let mut parts = str_of(v, "volume").split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            src.starts_with("./")
                .then(|| (src.to_string(), dst.to_string()))
        })
        .collect()
}

/// The container side of a Compose `ports` entry (`"6432:6432"`, `"127.0.0.1:6432:6432"`, `6432`).
fn container_port(entry: &Value) -> u16 {
    let text = match entry {
        Value::Number(n) => n.to_string(),
        other => str_of(other, "port").to_string(),
    };
    let last = text.rsplit(':').next().expect("port");
    last.split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad port entry {text}"))
}

#[test]
fn deployment_files_are_well_formed() {
    let root = repo();
    let mut files = yaml_files(&root.join("docker"));
    files.extend(yaml_files(&root.join("deploy/k8s")));
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .expect("in the repository")
                .display()
                .to_string()
        })
        .collect();
    for expected in [
        "docker/docker-compose.yml",
        "docker/prometheus/prometheus.yml",
        "docker/grafana/provisioning/datasources/prometheus.yml",
        "docker/grafana/provisioning/dashboards/pgsplit.yml",
        "deploy/k8s/sidecar.yaml",
        "deploy/k8s/standalone.yaml",
    ] {
        assert!(names.contains(expected), "{expected} missing: {names:?}");
    }
    for file in &files {
        let docs = load_yaml(file);
        if file.starts_with(root.join("deploy/k8s")) {
            for doc in &docs {
                for key in ["apiVersion", "kind"] {
                    str_of(&doc[key], &format!("{}: {key}", file.display()));
                }
                str_of(
                    &doc["metadata"]["name"],
                    &format!("{}: metadata.name", file.display()),
                );
            }
        }
    }
    let d = dashboard();
    str_of(&d["uid"], "dashboard uid");
    str_of(&d["title"], "dashboard title");
    assert!(
        dashboard_exprs(&d).len() >= 10,
        "the dashboard has few queries"
    );
}

#[test]
fn compose_stack_agrees_with_its_pgsplit_configuration() {
    let docker = repo().join("docker");
    let compose = load_one(&docker.join("docker-compose.yml"));
    let services = compose["services"].as_object().expect("services");
    for s in [
        "primary",
        "replica1",
        "replica2",
        "pgsplit",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "service {s} missing");
    }
    // Every bind-mounted file or folder exists.
    for (name, svc) in services {
        for (src, _) in bind_mounts(svc) {
            assert!(
                docker.join(&src).exists(),
                "service {name} mounts {src}, which does not exist"
            );
        }
    }
    // The replicas stream from the primary through the existing entrypoint, each under its own name.
    for r in ["replica1", "replica2"] {
        let svc = &services[r];
        assert_eq!(svc["image"], "postgres:15", "{r}");
        assert_eq!(svc["environment"]["PRIMARY_HOST"], "primary", "{r}");
        assert_eq!(svc["environment"]["REPLICA_NAME"], r, "{r}");
        assert!(
            svc["environment"]["REPLICATION_PASSWORD"].is_string(),
            "{r}: merged env"
        );
        assert!(
            bind_mounts(svc)
                .iter()
                .any(|(s, _)| s == "./replica-entrypoint.sh"),
            "{r}"
        );
        assert!(
            svc["entrypoint"]
                .to_string()
                .contains("replica-entrypoint.sh"),
            "{r}"
        );
    }

    // pgsplit: built from the Dockerfile, its configuration mounted where the image's CMD reads it.
    let pg = &services["pgsplit"];
    let context = docker.join(str_of(&pg["build"]["context"], "build.context"));
    let dockerfile_path = context.join(str_of(&pg["build"]["dockerfile"], "build.dockerfile"));
    let dockerfile = std::fs::read_to_string(&dockerfile_path).expect("the Dockerfile");
    let cmd = dockerfile
        .lines()
        .find(|l| l.starts_with("CMD "))
        .expect("CMD in the Dockerfile");
    let (src, target) = bind_mounts(pg)
        .into_iter()
        .find(|(_, t)| cmd.contains(&format!("\"{t}\"")))
        .expect("pgsplit's configuration mounted at the path the image's CMD reads");
    assert_eq!(target, "/etc/pgsplit/pgsplit.toml");
    let env: Vec<(String, String)> = pg["environment"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("PGSPLIT_") && !pgsplit::config::env::is_excluded(k))
        .map(|(k, v)| (k.clone(), str_of(v, k).to_string()))
        .collect();
    let config = Source {
        file: Some(docker.join(&src)),
        flags: Flags::default(),
        env,
    }
    .load()
    .unwrap_or_else(|e| panic!("docker/{src} does not load: {e}"));

    // Ports: pgsplit's defaults, on every interface (or the published ports reach nothing), published, exposed.
    let d = defaults();
    assert_eq!(config.listen.port(), d.listen.port());
    assert_eq!(config.admin_listen.port(), d.admin_listen.port());
    assert!(config.listen.ip().is_unspecified(), "{}", config.listen);
    assert!(
        config.admin_listen.ip().is_unspecified(),
        "{}",
        config.admin_listen
    );
    let published: BTreeSet<u16> = pg["ports"]
        .as_array()
        .expect("pgsplit publishes ports")
        .iter()
        .map(container_port)
        .collect();
    let expose: BTreeSet<u16> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| {
            l.split_whitespace()
                .map(|p| p.parse::<u16>().expect("EXPOSE port"))
        })
        .collect();
    for port in [config.listen.port(), config.admin_listen.port()] {
        assert!(
            published.contains(&port),
            "port {port} not published: {published:?}"
        );
        assert!(
            expose.contains(&port),
            "port {port} not in EXPOSE: {expose:?}"
        );
    }
    // The servers it points at are the Compose services, on PostgreSQL's port.
    let mut hosts = vec![(&config.primary.host, config.primary.port)];
    hosts.extend(config.replicas.iter().map(|r| (&r.host, r.port)));
    assert_eq!(hosts.len(), 3, "a primary and two replicas");
    for (host, port) in hosts {
        assert!(
            services.contains_key(host.as_str()),
            "server {host} is not a service"
        );
        assert_eq!(port, pgsplit::config::DEFAULT_PORT);
    }

    // Prometheus scrapes pgsplit's admin port with its token.
    let prom = &services["prometheus"];
    let (src, _) = bind_mounts(prom)
        .into_iter()
        .find(|(_, t)| t == "/etc/prometheus/prometheus.yml")
        .expect("prometheus.yml mounted where the image reads it");
    let scrape = load_one(&docker.join(&src));
    let jobs = scrape["scrape_configs"].as_array().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| {
            j["static_configs"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|t| str_of(t, "target").starts_with("pgsplit:"))
                })
        })
        .expect("a scrape job for pgsplit");
    for s in job["static_configs"].as_array().expect("static_configs") {
        for t in s["targets"].as_array().expect("targets") {
            let (host, port) = str_of(t, "target").rsplit_once(':').expect("host:port");
            assert!(services.contains_key(host), "target {host}");
            assert_eq!(port.parse::<u16>().ok(), Some(config.admin_listen.port()));
        }
    }
    let path = job["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(path, "/metrics");
    assert_eq!(job["scheme"].as_str().unwrap_or("http"), "http");
    if let Some(token) = &config.admin_token {
        let auth = &job["authorization"];
        assert_eq!(auth["type"].as_str().unwrap_or("Bearer"), "Bearer");
        assert_eq!(
            auth["credentials"].as_str(),
            Some(token.as_str()),
            "Prometheus must send pgsplit's admin_token"
        );
    }

    // Grafana: the provisioned data source is the Prometheus service, the dashboard folder is where the provider
    // looks, and every panel uses the provisioned data source.
    let graf = &services["grafana"];
    let mounts = bind_mounts(graf);
    let mount = |src: &str| {
        mounts
            .iter()
            .find(|(s, _)| s == src)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("grafana does not mount {src}"))
    };
    assert_eq!(mount("./grafana/provisioning"), "/etc/grafana/provisioning");
    let ds = load_one(&docker.join("grafana/provisioning/datasources/prometheus.yml"));
    let ds = &ds["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    assert_eq!(ds["url"], "http://prometheus:9090");
    let uid = str_of(&ds["uid"], "datasource uid");
    let ports: Vec<u16> = prom["ports"]
        .as_array()
        .expect("prometheus ports")
        .iter()
        .map(container_port)
        .collect();
    assert_eq!(ports, [9090]);
    let providers = load_one(&docker.join("grafana/provisioning/dashboards/pgsplit.yml"));
    let provider_path = str_of(
        &providers["providers"][0]["options"]["path"],
        "provider path",
    );
    assert_eq!(mount("./grafana/dashboards"), provider_path);
    assert!(docker.join("grafana/dashboards/pgsplit.json").is_file());
    let home = str_of(
        &graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"],
        "home dashboard",
    );
    assert_eq!(home, format!("{provider_path}/pgsplit.json"));
    let dash = dashboard();
    for p in panels(&dash) {
        let mut refs = vec![&p["datasource"]];
        refs.extend(
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| &t["datasource"]),
        );
        for r in refs.into_iter().filter(|r| !r.is_null()) {
            assert_eq!(r["uid"], uid, "panel {}: data source", p["title"]);
        }
    }
}

/// A Kubernetes object's documents by kind and name.
struct Manifest {
    docs: Vec<Value>,
}

impl Manifest {
    fn of_kind<'a>(&'a self, kind: &'static str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .filter(|d| d["kind"] == kind)
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the manifest"))
    }

    /// A Secret's key (stringData, else base64 data).
    fn secret(&self, name: &str, key: &str) -> String {
        let s = self.named("Secret", name);
        if let Some(v) = s["stringData"][key].as_str() {
            return v.to_string();
        }
        let b64 = str_of(&s["data"][key], &format!("Secret {name} key {key}"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64 Secret data");
        String::from_utf8(raw).expect("UTF-8 Secret data")
    }

    fn config_map(&self, name: &str, key: &str) -> String {
        str_of(
            &self.named("ConfigMap", name)["data"][key],
            &format!("ConfigMap {name} key {key}"),
        )
        .to_string()
    }

    /// A container's environment, values from Secrets and ConfigMaps resolved and `$(VAR)` expanded as the
    /// kubelet does (earlier variables of the same container only).
    fn env(&self, container: &Value) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let name = str_of(&e["name"], "env name").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &out)
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                self.secret(str_of(&r["name"], "secret name"), str_of(&r["key"], "key"))
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                self.config_map(str_of(&r["name"], "name"), str_of(&r["key"], "key"))
            } else {
                panic!("env {name}: unsupported source {e}")
            };
            out.push((name, value));
        }
        out
    }
}

/// `$(VAR)` references to earlier variables, as in a container's `env` values.
fn expand(value: &str, vars: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("$({k})"), v);
    }
    assert!(!out.contains("$("), "unresolved reference in {value}");
    out
}

/// A container port, by number or by the name of one of the container's ports.
fn resolve_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).expect("port");
    }
    let name = str_of(port, "port");
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .map(|n| u16::try_from(n).expect("port"))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
}

/// What `pgsplit check-config` makes of a container's arguments and environment (ConfigMap volumes written to
/// a temporary folder): listen, admin_listen, and the merged configuration as TOML.
fn check_config(
    manifest: &Manifest,
    pod: &Value,
    container: &Value,
    env: &[(String, String)],
) -> (SocketAddr, SocketAddr, toml::Table) {
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("pgsplit's args")
        .iter()
        .map(|a| str_of(a, "arg").to_string())
        .collect();
    assert!(
        container["command"].is_null(),
        "the image's entrypoint (pgsplit) is kept"
    );
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mounts = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = str_of(&m["mountPath"], "mountPath");
        let vol = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {}", m["name"]));
        let cm = str_of(
            &vol["configMap"]["name"],
            "only ConfigMap volumes are supported",
        );
        let local = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&local).expect("mkdir");
        let data = manifest.named("ConfigMap", cm)["data"]
            .as_object()
            .expect("ConfigMap data");
        for (k, v) in data {
            std::fs::write(local.join(k), str_of(v, k)).expect("write");
        }
        mounts.push((path.to_string(), local));
    }
    let args: Vec<String> = args[1..]
        .iter()
        .map(|a| {
            mounts
                .iter()
                .find(|(p, _)| a.starts_with(&format!("{p}/")))
                .map_or_else(
                    || a.clone(),
                    |(p, local)| local.join(&a[p.len() + 1..]).display().to_string(),
                )
        })
        .collect();
    let out = Command::new(BIN)
        .arg("check-config")
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run pgsplit check-config");
    assert!(
        out.status.success(),
        "pgsplit refuses the container's configuration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}: {text}"));
    let addr =
        |k: &str| -> SocketAddr { table[k].as_str().expect(k).parse().expect("socket address") };
    (addr("listen"), addr("admin_listen"), table)
}

#[test]
fn kubernetes_manifests_agree_with_pgsplit() {
    let d = defaults();
    let mut seen = BTreeSet::new();
    for file in yaml_files(&repo().join("deploy/k8s")) {
        let manifest = Manifest {
            docs: load_yaml(&file),
        };
        let mut pgsplit_containers = 0;
        for deployment in manifest.of_kind("Deployment") {
            let template = &deployment["spec"]["template"];
            let pod = &template["spec"];
            let labels = &template["metadata"]["labels"];
            assert!(
                labels_match(&deployment["spec"]["selector"]["matchLabels"], labels),
                "{}: the selector does not match the pod's labels",
                file.display()
            );
            let containers = pod["containers"].as_array().expect("containers");
            for c in containers.iter().filter(|c| c["name"] == "pgsplit") {
                pgsplit_containers += 1;
                let what = format!("{}: container pgsplit", file.display());
                let env = manifest.env(c);
                let (listen, admin, merged) = check_config(&manifest, pod, c, &env);

                // pgsplit's default ports; the admin endpoint reachable by the kubelet.
                assert_eq!(listen.port(), d.listen.port(), "{what}");
                assert_eq!(admin.port(), d.admin_listen.port(), "{what}");
                assert!(
                    admin.ip().is_unspecified(),
                    "{what}: probes cannot reach {admin}"
                );

                // Declared ports are pgsplit's; the admin port and any non-loopback listen port are declared.
                let declared: BTreeSet<u16> = c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| resolve_port(c, &p["containerPort"]))
                    .collect();
                assert!(
                    declared.is_subset(&[listen.port(), admin.port()].into()),
                    "{what}: {declared:?}"
                );
                assert!(declared.contains(&admin.port()), "{what}");
                if !listen.ip().is_loopback() {
                    assert!(declared.contains(&listen.port()), "{what}");
                }

                // Probes: liveness /health, readiness /ready/read, on the admin port, with the token pgsplit
                // requires there.
                let token = env
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("PGSPLIT_ADMIN_TOKEN"))
                    .map(|(_, v)| v.clone());
                assert_eq!(
                    merged["admin_token"].as_str(),
                    token.as_ref().map(|_| "<redacted>")
                );
                let token = token.expect("a non-loopback admin_listen requires a token");
                for (probe, path) in [
                    ("livenessProbe", "/health"),
                    ("readinessProbe", "/ready/read"),
                ] {
                    let get = &c[probe]["httpGet"];
                    assert_eq!(get["path"], path, "{what}: {probe}");
                    assert_eq!(
                        resolve_port(c, &get["port"]),
                        admin.port(),
                        "{what}: {probe}"
                    );
                    assert_eq!(
                        get["scheme"].as_str().unwrap_or("HTTP"),
                        "HTTP",
                        "{what}: {probe}"
                    );
                    let auth = get["httpHeaders"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|h| {
                            h["name"]
                                .as_str()
                                .is_some_and(|n| n.eq_ignore_ascii_case("authorization"))
                        })
                        .unwrap_or_else(|| panic!("{what}: {probe} sends no token"));
                    assert_eq!(auth["value"], format!("Bearer {token}"), "{what}: {probe}");
                }

                let res = &c["resources"];
                for r in ["requests.cpu", "requests.memory", "limits.memory"] {
                    let (a, b) = r.split_once('.').expect("dotted");
                    assert!(res[a][b].is_string(), "{what}: resources.{r}");
                }

                if listen.ip().is_loopback() {
                    // The sidecar: the application in the same pod connects to pgsplit on loopback, as the user,
                    // with the password, to the database pgsplit serves.
                    seen.insert("sidecar");
                    let (app, url) = containers
                        .iter()
                        .filter(|o| o["name"] != "pgsplit")
                        .find_map(|o| {
                            let env = manifest.env(o);
                            let url = env.into_iter().find(|(k, _)| k == "DATABASE_URL")?.1;
                            Some((o["name"].clone(), url))
                        })
                        .unwrap_or_else(|| panic!("{what}: no container with DATABASE_URL"));
                    let url =
                        PgUrl::parse(&url).unwrap_or_else(|e| panic!("{app}: DATABASE_URL: {e}"));
                    assert!(
                        url.host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                            || url.host == "localhost",
                        "{app}: DATABASE_URL host {}",
                        url.host
                    );
                    assert_eq!(url.port, listen.port(), "{app}: DATABASE_URL port");
                    let primary = env
                        .iter()
                        .find(|(k, _)| k == "PGSPLIT_PRIMARY_URL")
                        .map(|(_, v)| PgUrl::parse(v).expect("PGSPLIT_PRIMARY_URL"))
                        .expect("the sidecar gets the primary's URL from its environment");
                    assert_eq!(url.user, primary.user, "{app}: user");
                    assert_eq!(url.password, primary.password, "{app}: password");
                    let db = merged["databases"][0]["name"].as_str();
                    assert_eq!(url.dbname.as_deref(), db, "{app}: database");
                    assert_eq!(merged["users"][0]["name"].as_str(), url.user.as_deref());
                } else {
                    // Standalone: a Service selects the pods and targets both ports.
                    seen.insert("standalone");
                    let service = manifest
                        .of_kind("Service")
                        .find(|s| labels_match(&s["spec"]["selector"], labels))
                        .unwrap_or_else(|| panic!("{what}: no Service selects the pods"));
                    let targets: BTreeSet<u16> = service["spec"]["ports"]
                        .as_array()
                        .expect("Service ports")
                        .iter()
                        .map(|p| {
                            let t = &p["targetPort"];
                            resolve_port(c, if t.is_null() { &p["port"] } else { t })
                        })
                        .collect();
                    assert_eq!(
                        targets,
                        [listen.port(), admin.port()].into(),
                        "{what}: Service"
                    );
                }
            }
        }
        assert!(
            pgsplit_containers > 0,
            "{}: no pgsplit container",
            file.display()
        );
    }
    assert_eq!(seen, ["sidecar", "standalone"].into());
}

/// The names a `/metrics` text holds: every sample's, and for each `# TYPE` family the sample names its type
/// gives (`_total` for a counter, `_bucket`/`_sum`/`_count` for a histogram), for a family rendered before it has
/// samples.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("type"));
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_scrape_metrics_exist_in_pgsplit_metrics() {
    let env = crate::common::env();
    let proxy = Proxy::bind(config(&env.cluster, 2, 2, ""))
        .await
        .expect("bind")
        .spawn()
        .expect("spawn");
    let admin = proxy.admin_addr;
    // Some traffic, so that routing counters and the latency histogram have samples too, and an error: the
    // errors family has no series (and is not rendered) until pgsplit has sent one.
    let client = connect_to(proxy.addr, APP).await.expect("connect");
    client.simple_query("SELECT 1").await.expect("select");
    client
        .simple_query("SELECT * FROM pgsplit_deploy_no_such_table")
        .await
        .expect_err("no such table");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::task::spawn_blocking(move || http_get(admin, "/health", None))
        .await
        .expect("get")
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "/health never became 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, text) = tokio::task::spawn_blocking(move || http_get(admin, "/metrics", None))
        .await
        .expect("get");
    assert_eq!(code, 200, "{text}");
    let exposed = exposed_names(&text);
    assert!(exposed.contains("pgsplit_server_up"), "{text}");

    let docker = repo().join("docker");
    let dash = dashboard();
    let mut used = BTreeMap::new();
    for expr in dashboard_exprs(&dash) {
        for name in metric_names(&expr) {
            used.insert(name, "docker/grafana/dashboards/pgsplit.json");
        }
    }
    let scrape = std::fs::read_to_string(docker.join("prometheus/prometheus.yml")).expect("read");
    let uncommented: String = scrape
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for name in metric_names(&uncommented) {
        used.insert(name, "docker/prometheus/prometheus.yml");
    }
    assert!(used.len() >= 15, "the dashboard uses few metrics: {used:?}");
    let missing: Vec<_> = used.iter().filter(|(n, _)| !exposed.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "metrics used but not in pgsplit's /metrics: {missing:?}\nexposed: {exposed:?}"
    );
    drop(client);
    proxy.shutdown().await;
}
