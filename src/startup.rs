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

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    answers::Answers, config::Config, error::Refusal, fetch_metadata, llm::Provider, request_id,
    routes, store::Store, telemetry::traces::Traces,
};

pub struct Application {
    server: Server,
    address: SocketAddr,
    /// Fires when the shutdown grace has run out: every running answer ends with `server_shutdown`.
    shutdown: CancellationToken,
    grace: Duration,
    store: Data<Store>,
    /// `/metrics` on its own listener, when METRICS_ADDR asks for one.
    metrics_server: Option<(Server, SocketAddr)>,
    /// Traces (OTEL_EXPORTER_OTLP_ENDPOINT), flushed at shutdown.
    traces: Data<Traces>,
}

/// The longest the last export of traces may hold shutdown up.
const TRACES_FLUSH: Duration = Duration::from_millis(1500);

/// Extra time actix gives connections after our grace, for the final error frames to be written.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

impl Application {
    /// Binds the listener (port 0 picks a free port) and wires the app; nothing runs until
    /// [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> io::Result<Self> {
        let listener = bind("LISTEN_ADDR", &config.listen_addr)?;
        let address = listener.local_addr()?;
        if !config.static_dir.is_dir() {
            tracing::warn!(static_dir = %config.static_dir.display(), "STATIC_DIR is not a folder: the page will have no styles or script");
        }
        let metrics_listener = config
            .metrics_addr
            .as_deref()
            .map(|address| bind("METRICS_ADDR", address))
            .transpose()?;
        let metrics_on_main = metrics_listener.is_none();
        let metrics = Data::new(crate::metrics::handle());
        let provider = Data::new(Provider::from_config(&config).map_err(io::Error::other)?);
        let auth = crate::auth::Auth::new(&config)
            .map_err(io::Error::other)?
            .map(Data::new);
        let traces = Data::new(Traces::new(&config).map_err(io::Error::other)?);
        let app_traces = traces.clone();
        let shutdown = CancellationToken::new();
        let (store, mut signals) = Store::new(&config);
        let store = Data::new(store);
        let answers = Answers::new(&config, store.clone().into_inner(), shutdown.clone());
        let signalled = answers.clone();
        tokio::spawn(async move {
            while let Some(signal) = signals.recv().await {
                signalled.on_signal(signal);
            }
        });
        let answers = Data::new(answers);
        let grace = config.shutdown_grace;
        let config = Data::new(config);

        let metrics_server = match metrics_listener {
            Some(listener) => Some(metrics_server(listener, metrics.clone(), store.clone())?),
            None => None,
        };
        let app_store = store.clone();
        let server = HttpServer::new(move || {
            // Who is asking, on every route that answers for a client; not wired at all without AUTH_*.
            let auth_on = auth.is_some();
            macro_rules! who {
                () => {
                    middleware::Condition::new(
                        auth_on,
                        middleware::from_fn(routes::auth::who_is_asking),
                    )
                };
            }
            App::new()
                .app_data(config.clone())
                .configure(|app| {
                    if let Some(auth) = &auth {
                        app.app_data(auth.clone());
                    }
                })
                .app_data(provider.clone())
                .app_data(app_store.clone())
                .app_data(answers.clone())
                .app_data(metrics.clone())
                .app_data(app_traces.clone())
                .app_data(web::QueryConfig::default().error_handler(|error, _| {
                    let refusal = Refusal::InvalidQuery(format!(
                        "The query string could not be read: {error}."
                    ));
                    crate::metrics::refused(&refusal);
                    refusal.into()
                }))
                // The last `.wrap` is the outermost: the request id first, so that everything
                // after it (paths, limits, handlers) logs inside the request's span.
                .wrap(middleware::NormalizePath::trim())
                .wrap(middleware::from_fn(request_id::request_id))
                .service(get_only("/", routes::page::page))
                .service(get_only("/healthz", routes::health::health))
                .service(get_only("/api/limits", routes::limits::limits).wrap(who!()))
                .service(
                    get_only(
                        "/api/conversations/{conversation}",
                        routes::conversations::conversation,
                    )
                    .wrap(who!()),
                )
                .configure(|app| {
                    if metrics_on_main {
                        app.service(get_only("/metrics", routes::metrics::metrics));
                    }
                })
                .service(
                    web::resource("/api/stream")
                        .wrap(middleware::from_fn(routes::stream::rate_limit_headers))
                        // Inside CORS, so that a preflight needs no token and a 401 carries CORS
                        // headers the page can read.
                        .wrap(who!())
                        .wrap(cors(&config))
                        // Outermost: a request made by another site's page is refused before
                        // CORS, the rate limiter or the handler spend anything on it.
                        .wrap(middleware::from_fn(fetch_metadata::resource_isolation))
                        // With traces on, the server span holds every answer and refusal.
                        .wrap(middleware::from_fn(crate::telemetry::traces::server_span))
                        .route(web::get().to(routes::stream::stream))
                        // OPTIONS stays with CORS, for preflights.
                        .default_service(
                            web::route()
                                .guard(guard::Not(guard::Options()))
                                .to(routes::method_not_allowed),
                        ),
                )
                .service(
                    web::resource("/api/stream/{stream}/cancel")
                        .wrap(who!())
                        .wrap(middleware::from_fn(fetch_metadata::resource_isolation))
                        .route(web::post().to(routes::cancel::cancel))
                        .default_service(web::route().to(routes::method_not_allowed)),
                )
                .service(
                    web::scope("/static")
                        .wrap(middleware::from_fn(routes::page::cache_static))
                        .service(
                            Files::new("", &config.static_dir)
                                .use_etag(true)
                                .use_last_modified(true),
                        ),
                )
                .route("/favicon.ico", web::get().to(routes::page::favicon))
                .default_service(web::route().to(routes::not_found))
        })
        // Notice a client that closed its side at once, not at the next failed write.
        .h1_allow_half_closed(false)
        // Each event is a small write: without this, Nagle holds one back until the client ACKs
        // the previous one (up to its delayed-ACK timer, 40 ms on Linux).
        .tcp_nodelay(true)
        .disable_signals()
        .shutdown_timeout((grace + SHUTDOWN_FLUSH).as_secs().max(1))
        .listen(listener)?
        .run();

        Ok(Self {
            server,
            address,
            shutdown,
            grace,
            store,
            metrics_server,
            traces,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Where `/metrics` is served apart from the main listener, when METRICS_ADDR is set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|(_, address)| *address)
    }

    /// The store, for tests to look at.
    pub fn store(&self) -> Data<Store> {
        self.store.clone()
    }

    /// Serves until `stop` resolves; then stops accepting, lets running streams finish for the
    /// shutdown grace, and ends the rest with the in-band `server_shutdown` error.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> io::Result<()> {
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        let metrics_server = self.metrics_server.map(|(server, _)| {
            let handle = server.handle();
            (handle, tokio::spawn(server))
        });
        let cleanup = tokio::spawn(forget_idle_clients(self.store.clone()));
        let store_upkeep = self.store.upkeep().map(tokio::spawn);
        let upkeep = tokio::spawn(metrics_upkeep(crate::metrics::handle()));
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
                self.shutdown.cancel();
                stopped.await;
            }
        }
        cleanup.abort();
        upkeep.abort();
        if let Some(store_upkeep) = store_upkeep {
            store_upkeep.abort();
        }
        if let Some((handle, server)) = metrics_server {
            handle.stop(false).await;
            let _ = server.await;
        }
        let served = server.await.map_err(io::Error::other)?;
        self.traces.shut_down(TRACES_FLUSH).await;
        served
    }
}

/// Binds `address`; a failure (in use, not allowed) names the setting it came from.
fn bind(setting: &str, address: &str) -> io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {address} ({setting}): {e}"),
        )
    })
}

/// A listener that serves only `/metrics` (METRICS_ADDR), so that it need not face the internet.
fn metrics_server(
    listener: std::net::TcpListener,
    metrics: Data<PrometheusHandle>,
    store: Data<Store>,
) -> io::Result<(Server, SocketAddr)> {
    let address = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .app_data(store.clone())
            .route("/metrics", web::get().to(routes::metrics::metrics))
            .default_service(web::route().to(routes::not_found))
    })
    // One worker is plenty for a scrape every few seconds.
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, address))
}

/// Folds histogram samples in even when nobody scrapes, so they never pile up in memory.
async fn metrics_upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// A resource answering GET with `handler`, and any other method with 405 JSON.
fn get_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::route().to(routes::method_not_allowed))
}

/// Same-origin only unless CORS_ALLOWED_ORIGINS names sites. Under auth, those sites' pages may
/// send the sign-in cookie (`withCredentials`): the answer then names the exact origin, never `*`.
fn cors(config: &Config) -> Cors {
    let cors = config
        .cors_allowed_origins
        .iter()
        .fold(Cors::default(), |cors, origin| cors.allowed_origin(origin))
        .allowed_methods(["GET"])
        // Refuse before the handler: a mismatched origin must not spend the model budget.
        .block_on_origin_mismatch(true)
        .expose_headers([
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "retry-after",
        ])
        .max_age(600);
    if config.auth_enabled() {
        cors.supports_credentials()
    } else {
        cors
    }
}

/// Keeps the rate limiter's memory bounded by forgetting clients whose budget is full again.
async fn forget_idle_clients(store: Data<Store>) {
    let mut tick = tokio::time::interval(crate::store::local::CLEANUP_INTERVAL);
    loop {
        tick.tick().await;
        let remembered = store.local_limits().forget_idle_clients();
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
