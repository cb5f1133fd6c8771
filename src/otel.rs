//! The trace context handed down to the upstream calls, and the HTTP client span of one upstream
//! attempt. With traces on, an answer's upstream stream is polled inside an OpenTelemetry
//! `Context` holding the answer's chat span and the [`Tracer`] (so that nothing global is needed);
//! each attempt opens a child span there and sends its `traceparent` upstream. With traces off
//! there is no such context, and an attempt costs one look at a thread-local.

use opentelemetry::{
    Context, KeyValue,
    propagation::TextMapPropagator,
    trace::{SpanKind, Status, TraceContextExt, Tracer as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracer};

/// The tracer, carried in the `Context` that the upstream calls run in.
#[derive(Clone, Debug)]
pub struct Tracer(pub SdkTracer);

/// The client span of one upstream HTTP attempt; nothing when traces are off. It ends when dropped.
pub struct Attempt(Option<Context>);

impl Attempt {
    /// Opens the attempt's span under the current context's span (the answer's chat span), and
    /// puts its `traceparent` (and the incoming `tracestate`) on `request`.
    pub fn start(request: &mut reqwest::Request, upstream: &'static str) -> Self {
        let current = Context::current();
        let Some(Tracer(tracer)) = current.get::<Tracer>() else {
            return Self(None);
        };
        let url = request.url();
        let method = request.method().as_str().to_owned();
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new(
                "server.address",
                url.host_str().unwrap_or_default().to_owned(),
            ),
            KeyValue::new(
                "server.port",
                i64::from(url.port_or_known_default().unwrap_or_default()),
            ),
            KeyValue::new("llm_stream.upstream", upstream),
        ];
        // Without user info, query or fragment: a URL's secrets do not leave the process.
        let mut full = url.clone();
        let _ = full.set_username("");
        let _ = full.set_password(None);
        full.set_query(None);
        full.set_fragment(None);
        attributes.push(KeyValue::new("url.full", full.to_string()));
        let span = tracer
            .span_builder(method)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &current);
        let context = current.with_span(span);
        TraceContextPropagator::new().inject_context(
            &context,
            &mut opentelemetry_http::HeaderInjector(request.headers_mut()),
        );
        Self(Some(context))
    }

    /// The response's status; 4xx and 5xx mark the attempt failed.
    pub fn status(&self, status: u16) {
        let Some(context) = &self.0 else { return };
        let span = context.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(""));
        }
    }

    /// No response: `error` is our code for why (a timeout, no connection).
    pub fn failed(&self, error: &'static str) {
        let Some(context) = &self.0 else { return };
        let span = context.span();
        span.set_attribute(KeyValue::new("error.type", error));
        span.set_status(Status::error(""));
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(context) = &self.0 {
            context.span().end();
        }
    }
}
