//! The `pgsplit` command: `run`, `check-config`, `demo` (with the default `demo` feature).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use pgsplit::config::{env, Config, ConfigError, Flags, LogFormat, Source};
use pgsplit::proxy::Proxy;

#[derive(Parser)]
#[command(
    name = "pgsplit",
    version,
    about = "Replication-aware connection proxy for PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy, from a configuration file, from server URLs (a sidecar needs no file), or both (the flags
    /// win over the file). PGSPLIT_<OPTION> and PGSPLIT_<TABLE>__<OPTION> environment variables override
    /// options (e.g. PGSPLIT_POOLS__READ_POOL_SIZE=10).
    Run {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Validate a configuration (a file, flags, PGSPLIT_* variables, as `run` takes them) and print the effective
    /// configuration, secrets redacted.
    CheckConfig {
        /// Configuration file (TOML); same as --config.
        #[arg(conflicts_with = "config")]
        file: Option<PathBuf>,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Start a local primary and streaming replicas with pgsplit in front, for a first look.
    #[cfg(feature = "demo")]
    Demo {
        /// Number of streaming replicas.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Port for pgsplit (0: any free port; default 6432, or a free one if taken).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Present, hidden, in a build without the `demo` feature, only to say so.
    #[cfg(not(feature = "demo"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

/// Where the configuration comes from.
#[derive(Args)]
struct SourceArgs {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The primary's URL, postgres://user:password@host[:port]/database[?sslmode=...]: clients log in as that user
    /// with that password (SCRAM) to that database, and pgsplit logs in to the servers with them. Default:
    /// $PGSPLIT_PRIMARY_URL.
    #[arg(long, value_name = "URL")]
    primary: Option<String>,
    /// A replica's URL, postgres://host[:port][?sslmode=...] (repeatable). Default: $PGSPLIT_REPLICA_URLS
    /// (comma-separated).
    #[arg(long = "replica", value_name = "URL")]
    replicas: Vec<String>,
    /// Address clients connect to (overrides `listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the admin endpoint (overrides `admin_listen`).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
}

impl SourceArgs {
    /// The sources: the file, the flags (URLs from the environment when no flag gives them), the environment.
    fn source(self, file: Option<PathBuf>) -> Result<Source, ConfigError> {
        let file = file.or(self.config);
        let primary = self
            .primary
            .or_else(|| std::env::var("PGSPLIT_PRIMARY_URL").ok());
        let mut replicas = self.replicas;
        if replicas.is_empty() {
            if let Ok(list) = std::env::var("PGSPLIT_REPLICA_URLS") {
                replicas = list
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_string)
                    .collect();
            }
        }
        if file.is_none() && primary.is_none() {
            return Err(ConfigError {
                file: pgsplit::config::NO_FILE.to_string(),
                line: None,
                field: None,
                message:
                    "give a configuration file (--config FILE) or the primary's URL (--primary \
                          postgres://user:password@host/database, or $PGSPLIT_PRIMARY_URL)"
                        .to_string(),
            });
        }
        Ok(Source {
            file,
            flags: Flags::parse(
                primary.as_deref(),
                &replicas,
                self.listen,
                self.admin_listen,
            )?,
            env: env::from_process()?,
        })
    }
}

/// The sources and the configuration merged from them.
fn load(args: SourceArgs, file: Option<PathBuf>) -> Result<(Source, Config), ConfigError> {
    let source = args.source(file)?;
    let config = source.load()?;
    Ok((source, config))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logging starts once the format is known: from `PGSPLIT_LOG_FORMAT`, else from the configuration file.
    let env_format = match std::env::var("PGSPLIT_LOG_FORMAT") {
        Ok(v) if !v.trim().is_empty() => match LogFormat::parse(&v) {
            Some(f) => Some(f),
            None => {
                eprintln!("pgsplit: PGSPLIT_LOG_FORMAT must be `text` or `json`, not `{v}`");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    raise_fd_limit();
    match cli.command {
        Command::CheckConfig { file, source } => match load(source, file) {
            Ok((source, config)) => {
                init_logging(env_format.unwrap_or(config.log_format));
                println!("# from: {}", source.describe());
                print!("{}", config.effective_toml());
                ExitCode::SUCCESS
            }
            Err(e) => fail(env_format.unwrap_or_default(), &e),
        },
        Command::Run { source } => {
            let (source, config) = match load(source, None) {
                Ok(loaded) => loaded,
                Err(e) => return fail(env_format.unwrap_or_default(), &e),
            };
            let format = env_format.unwrap_or(config.log_format);
            init_logging(format);
            runtime(config.workers).block_on(async move {
                // Listened for before anything is bound: a SIGHUP sent once the ports answer must not find the
                // default action (which ends the process).
                let hup = sighup();
                let from = source.describe();
                let proxy = match Proxy::bind_source(config.clone(), source).await {
                    Ok(p) => p,
                    Err(e) => {
                        return report(
                            format,
                            &format!("pgsplit: cannot listen on {}: {e}", config.listen),
                        )
                    }
                };
                tracing::info!(listen = %config.listen, primary = %config.primary.address(), replicas = config.replicas.len(), %from, "pgsplit listening");
                reload_on_sighup(hup, proxy.shared());
                proxy.run(shutdown_signal()).await;
                ExitCode::SUCCESS
            })
        }
        #[cfg(feature = "demo")]
        Command::Demo { replicas, port } => {
            let format = env_format.unwrap_or_default();
            init_logging(format);
            runtime(0).block_on(pgsplit::demo::run(
                replicas,
                port,
                format == LogFormat::Json,
                shutdown_signal(),
            ))
        }
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => fail(
            env_format.unwrap_or_default(),
            &"pgsplit demo: this pgsplit was built without the `demo` feature (cargo build \
              --no-default-features); build it with default features to get the demo",
        ),
    }
}

/// Starts logging in `format` and reports a fatal error ([`report`]).
fn fail(format: LogFormat, error: &dyn std::fmt::Display) -> ExitCode {
    init_logging(format);
    report(format, error)
}

/// Reports a fatal error once logging has started: an `ERROR` line in JSON, else the message alone (as a person
/// reads it, e.g. ``pgsplit.toml:14: users[1].auth: md5 needs `password` ``). Returns failure.
fn report(format: LogFormat, error: &dyn std::fmt::Display) -> ExitCode {
    match format {
        LogFormat::Json => tracing::error!("{error}"),
        LogFormat::Text => eprintln!("{error}"),
    }
    ExitCode::FAILURE
}

/// The runtime: one thread runs everything when `workers = 1` (no hand-offs between threads at all), else a
/// work-stealing pool of `workers` threads (0: one per core).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        builder.worker_threads(workers);
    }
    match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgsplit: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// Logs to standard error at the level `PGSPLIT_LOG` (else `RUST_LOG`, else `info`) sets: JSON lines, or text
/// coloured only when standard error is a terminal (and `NO_COLOR` is not set).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGSPLIT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => {
            let _ = builder.json().flatten_event(true).try_init();
        }
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            let _ = builder.with_ansi(colour).try_init();
        }
    }
}

/// Lets pgsplit hold as many sockets as the hard limit allows.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The SIGHUP stream (`None`: cannot listen; reload with the console's RELOAD instead).
#[cfg(unix)]
fn sighup() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with the console's RELOAD");
        })
        .ok()
}

#[cfg(not(unix))]
fn sighup() -> Option<()> {
    None
}

/// Reloads the configuration file on each SIGHUP (a refused reload is logged; the configuration in force stays).
#[cfg(unix)]
fn reload_on_sighup(
    hup: Option<tokio::signal::unix::Signal>,
    shared: std::sync::Arc<pgsplit::proxy::Shared>,
) {
    let Some(mut hup) = hup else { return };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration file");
            let _ = shared.reload();
        }
    });
}

#[cfg(not(unix))]
fn reload_on_sighup(_: Option<()>, _: std::sync::Arc<pgsplit::proxy::Shared>) {}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
