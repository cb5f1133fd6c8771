//! Builds the application for both `main` and the tests: the listener, every route, the
//! middleware order and the shared state, in one place.

use std::{future::Future, io, net::SocketAddr, time::Duration};

use actix_cors::Cors;
use actix_files::Files;
use actix_web::{
    App, HttpServer,
    dev::Server,
    guard, middleware,
    web::{self, Data},
};

use crate::{
    config::Config,
    error::Refusal,
    limits::{self, Limits},
    llm::Provider,
    routes::{self, stream::Shutdown},
};

pub struct Application {
    server: Server,
    address: SocketAddr,
    shutdown: Shutdown,
    grace: Duration,
    limits: Data<Limits>,
}

/// Extra time actix gives connections after our grace, for the final error frames to be written.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

impl Application {
    /// Binds the listener (port 0 picks a free port) and wires the app; nothing runs until
    /// [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(&config.listen_addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.listen_addr),
            )
        })?;
        let address = listener.local_addr()?;
        let provider = Data::new(Provider::from_config(&config).map_err(io::Error::other)?);
        let limits = Data::new(Limits::new(&config));
        let shutdown = Shutdown::default();
        let grace = config.shutdown_grace();
        let config = Data::new(config);

        let app_limits = limits.clone();
        let app_shutdown = Data::new(shutdown.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(config.clone())
                .app_data(provider.clone())
                .app_data(app_limits.clone())
                .app_data(app_shutdown.clone())
                .app_data(web::QueryConfig::default().error_handler(|error, _| {
                    Refusal::InvalidQuery(format!("The query string could not be read: {error}."))
                        .into()
                }))
                .wrap(middleware::NormalizePath::trim())
                .route("/", web::get().to(routes::page::page))
                .route("/healthz", web::get().to(routes::health::health))
                .route("/api/limits", web::get().to(routes::limits::limits))
                .service(
                    web::resource("/api/stream")
                        .wrap(middleware::from_fn(limits::rate_limit))
                        .wrap(cors(&config))
                        .route(web::get().to(routes::stream::stream))
                        .default_service(
                            web::route()
                                .guard(guard::Not(guard::Options()))
                                .to(routes::method_not_allowed),
                        ),
                )
                .service(
                    Files::new("/static", concat!(env!("CARGO_MANIFEST_DIR"), "/static"))
                        .use_etag(true)
                        .use_last_modified(true),
                )
                .default_service(web::route().to(routes::not_found))
        })
        // Notice a client that closed its side at once, not at the next failed write.
        .h1_allow_half_closed(false)
        .disable_signals()
        .shutdown_timeout((grace + SHUTDOWN_FLUSH).as_secs().max(1))
        .listen(listener)?
        .run();

        Ok(Self {
            server,
            address,
            shutdown,
            grace,
            limits,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The limits, for tests and metrics to look at.
    pub fn limits(&self) -> Data<Limits> {
        self.limits.clone()
    }

    /// Serves until `stop` resolves; then stops accepting, lets running streams finish for the
    /// shutdown grace, and ends the rest with the in-band `server_shutdown` error.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> io::Result<()> {
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        let cleanup = tokio::spawn(forget_idle_clients(self.limits));
        stop.await;
        tracing::info!(
            grace_secs = self.grace.as_secs_f64(),
            "shutting down: no new connections"
        );
        let stopped = handle.stop(true);
        tokio::pin!(stopped);
        tokio::select! {
            () = &mut stopped => {}
            () = tokio::time::sleep(self.grace) => {
                tracing::info!("shutdown grace over: ending the remaining streams");
                self.shutdown.0.cancel();
                stopped.await;
            }
        }
        cleanup.abort();
        server.await.map_err(io::Error::other)?
    }
}

/// Same-origin only unless CORS_ALLOWED_ORIGINS names sites.
fn cors(config: &Config) -> Cors {
    config
        .cors_allowed_origins
        .iter()
        .filter(|origin| !origin.trim().is_empty())
        .fold(Cors::default(), |cors, origin| {
            cors.allowed_origin(origin.trim())
        })
        .allowed_methods(["GET"])
        .expose_headers([
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "retry-after",
        ])
        .max_age(600)
}

/// Keeps the rate limiter's memory bounded by forgetting clients whose budget is full again.
async fn forget_idle_clients(limits: Data<Limits>) {
    let mut tick = tokio::time::interval(limits::CLEANUP_INTERVAL);
    loop {
        tick.tick().await;
        let remembered = limits.forget_idle_clients();
        tracing::debug!(remembered, "forgot idle rate-limit clients");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
