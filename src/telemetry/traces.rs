//! Traces, when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT names a collector: the tracer and its export
//! (OTLP over HTTP with protobuf, on the async reqwest client and rustls we already build), the
//! server span of each `/api/stream` request (continuing an incoming `traceparent`), and the span
//! of a resume, linked to the answer it resumes. The chat span of an answer is [`super::chat`]'s.
//! The standard OTEL_* environment is honoured: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
//! OTEL_EXPORTER_OTLP_HEADERS (never logged), OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_TRACES_SAMPLER(_ARG).

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix_web::{
    Error, HttpMessage, HttpRequest,
    body::{BodySize, BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};
use opentelemetry::{
    Context, Key, KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::{Link, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider, Span},
};

use super::export::{self, Batching, Exporting};
use crate::{client::ClientId, config::Config, otel::Tracer};

/// What the process traces with; cheap to clone, and nothing at all when traces are off.
#[derive(Clone, Default)]
pub struct Traces(Option<Arc<On>>);

pub(super) struct On {
    /// Kept for its processor: the provider ends with the process.
    _provider: SdkTracerProvider,
    tracer: SdkTracer,
    exporting: Exporting,
    /// OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT.
    pub(super) capture_content: bool,
}

/// The server span's context, left in the request's extensions for the handler.
#[derive(Clone)]
pub struct ServerSpan(pub Context);

impl Traces {
    /// Traces when a collector is configured (inside tokio: the export task starts here).
    pub fn new(config: &Config) -> Result<Self, String> {
        let Some(endpoint) = config.otlp_traces_endpoint() else {
            return Ok(Self(None));
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|error| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {error}"))?;
        let detected = Resource::builder().build();
        let unnamed = detected
            .get(&Key::from_static_str("service.name"))
            .is_none_or(|name| name.as_str().starts_with("unknown_service"));
        let resource = if unnamed {
            Resource::builder().with_service_name("llm-stream").build()
        } else {
            detected
        };
        let mut exporter = exporter;
        opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &resource);
        let (queue, exporting) = export::start(
            exporter,
            Batching {
                max_queue: config.otel_bsp_max_queue_size as usize,
                delay: config.otel_bsp_schedule_delay,
                max_batch: config.otel_bsp_max_export_batch_size as usize,
            },
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("llm-stream");
        Ok(Self(Some(Arc::new(On {
            _provider: provider,
            tracer,
            exporting,
            capture_content: config.otel_capture_message_content,
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    pub(super) fn on(&self) -> Option<&On> {
        self.0.as_deref()
    }

    /// Exports the spans still queued, within `within`.
    pub async fn shut_down(&self, within: Duration) {
        if let Some(on) = &self.0 {
            on.exporting.shut_down(within).await;
        }
    }

    /// The span of a resume of the answer whose chat span `traceparent` names, under the
    /// request's server span; it ends when dropped (with the resumed reader).
    pub fn resume(
        &self,
        request: &HttpRequest,
        stream_id: &str,
        after: u64,
        traceparent: Option<&str>,
    ) -> Option<Span> {
        let on = self.on()?;
        let parent = server_context(request);
        let links = traceparent
            .and_then(span_context_of)
            .map(|answer| vec![Link::with_context(answer)])
            .unwrap_or_default();
        Some(
            on.tracer
                .span_builder("resume")
                .with_kind(SpanKind::Internal)
                .with_attributes([
                    KeyValue::new("llm_stream.stream_id", stream_id.to_owned()),
                    KeyValue::new("llm_stream.resume.after", after as i64),
                ])
                .with_links(links)
                .start_with_context(&on.tracer, &parent),
        )
    }
}

impl On {
    pub(super) fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// `context` with the tracer in it, for the upstream calls made inside it.
    pub(super) fn carrying(&self, context: Context) -> Context {
        context.with_value(Tracer(self.tracer.clone()))
    }
}

/// The request's server span, or nothing (a root) when it has none.
pub(super) fn server_context(request: &HttpRequest) -> Context {
    request
        .extensions()
        .get::<ServerSpan>()
        .map_or_else(Context::new, |span| span.0.clone())
}

/// The span context a `traceparent` names, to link to.
fn span_context_of(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let span = context.span();
    let found = span.span_context();
    found.is_valid().then(|| found.clone())
}

/// The `traceparent` of `context`'s span, to keep with an answer.
pub(super) fn traceparent_of(context: &Context) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    carrier.remove("traceparent")
}

/// An actix request's headers, read by the W3C propagator.
struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// Middleware around `/api/stream`: with traces on, the request's server span, a child of the
/// incoming `traceparent` when there is one; it ends with the response's body. Off, it only passes
/// the request on.
pub async fn server_span(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let traces = request.app_data::<web::Data<Traces>>().cloned();
    let Some(on) = traces.as_ref().and_then(|traces| traces.on()) else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let incoming = TraceContextPropagator::new().extract(&Headers(request.headers()));
    let mut attributes = vec![
        KeyValue::new("http.request.method", request.method().as_str().to_owned()),
        KeyValue::new("http.route", "/api/stream"),
        KeyValue::new("url.path", request.path().to_owned()),
        KeyValue::new("url.scheme", request.connection_info().scheme().to_owned()),
    ];
    if let Some(config) = request.app_data::<web::Data<Config>>()
        && let ClientId::Address(address) = ClientId::of(request.request(), config)
    {
        attributes.push(KeyValue::new("client.address", address.to_string()));
    }
    let span = on
        .tracer
        .span_builder(format!("{} /api/stream", request.method()))
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(&on.tracer, &incoming);
    let context = incoming.with_span(span);
    request.extensions_mut().insert(ServerSpan(context.clone()));
    let response = next.call(request).await;
    let span = context.span();
    match &response {
        Ok(response) => {
            let status = response.status();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() {
                span.set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
                span.set_status(Status::error(""));
            }
        }
        Err(error) => {
            span.set_attribute(KeyValue::new("error.type", error.to_string()));
            span.set_status(Status::error(""));
        }
    }
    Ok(response?.map_body(|_, body| {
        BoxBody::new(Ending {
            body: body.boxed(),
            _span: Ended(context),
        })
    }))
}

/// Ends the server span when the response's body is dropped: sent, or its client gone.
struct Ended(Context);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

/// A response body that holds its server span until it is done.
struct Ending {
    body: BoxBody,
    _span: Ended,
}

impl MessageBody for Ending {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<bytes::Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}
