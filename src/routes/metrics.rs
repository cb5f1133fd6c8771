//! `GET /metrics`: Prometheus text format, on the main listener or on METRICS_ADDR's own.

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::store::Store;

pub async fn metrics(handle: web::Data<PrometheusHandle>, store: web::Data<Store>) -> HttpResponse {
    crate::metrics::streams_open(store.streams_open_here());
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}
