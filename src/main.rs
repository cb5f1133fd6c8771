//! The binary: configuration → telemetry → application → run until a signal.

use llm_stream::{config::Config, startup::Application, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(exit) => return exit.report(),
    };
    telemetry::init(config.log_format);
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("llm-stream: cannot start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(address = %app.address(), "llm-stream listening");
    match app
        .run_until_stopped(llm_stream::startup::shutdown_signal())
        .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("llm-stream: server failed: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
