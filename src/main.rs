//! The `pgsplit` command: `run`, `check-config`, `demo` (with the default `demo` feature).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pgsplit::config::Config;
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
    /// Run the proxy.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    raise_fd_limit();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                print!("{}", config.effective_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime(config.workers).block_on(async move {
                // Listened for before anything is bound: a SIGHUP sent once the ports answer must not find the
                // default action (which ends the process).
                let hup = sighup();
                let proxy = match Proxy::bind_file(config.clone(), path).await {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("pgsplit: cannot listen on {}: {e}", config.listen);
                        return ExitCode::FAILURE;
                    }
                };
                tracing::info!(listen = %config.listen, primary = %config.primary.address(), replicas = config.replicas.len(), "pgsplit listening");
                reload_on_sighup(hup, proxy.shared());
                proxy.run(shutdown_signal()).await;
                ExitCode::SUCCESS
            })
        }
        #[cfg(feature = "demo")]
        Command::Demo { replicas, port } => {
            runtime(0).block_on(pgsplit::demo::run(replicas, port, shutdown_signal()))
        }
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            eprintln!(
                "pgsplit demo: this pgsplit was built without the `demo` feature (cargo build \
                 --no-default-features); build it with default features to get the demo"
            );
            ExitCode::FAILURE
        }
    }
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGSPLIT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
