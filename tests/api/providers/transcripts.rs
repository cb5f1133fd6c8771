//! The OpenAI-compatible provider against the streams real servers send, byte for byte, each with
//! its quirks: what the client receives must be exactly the text, reasoning and finish.

use serde_json::{Value, json};

use super::{expect, finish, outputs, writes};
use crate::{helpers::spawn_app, mock_upstream::Reply};

/// Streams `raw` as the upstream and checks what the client receives.
async fn check(raw: &str, want: &[(&'static str, &str)], want_finish: Value) {
    let app = spawn_app().await;
    app.mock.always(Reply::sse(writes(raw)));

    let answer = app.stream("hi").await;

    assert_eq!(outputs(&answer), expect(want), "{}", answer.body);
    assert_eq!(finish(&answer), want_finish);
}

#[tokio::test]
async fn openai_role_only_first_chunk_and_usage_only_last_chunk() {
    let raw = r#"data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"2sP1"}

data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"Y"}

data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"q9Lm"}

data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null,"obfuscation":"Lx"}

data: {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":2,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"obfuscation":"u"}

data: [DONE]

"#;
    check(
        raw,
        &[("token", "Hello"), ("token", "!")],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":19,"completion_tokens":2}}),
    )
    .await;
}

#[tokio::test]
async fn azure_prompt_filter_chunk_with_empty_choices_and_content_filter_chunks() {
    let raw = r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}]}

data: {"choices":[{"content_filter_results":{},"delta":{"content":"","refusal":null,"role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1741570231,"id":"chatcmpl-B9MgpqbXrSGHmRWl4ZE0VYcYDnmpu","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_b705f0c291","usage":null}

data: {"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"delta":{"content":"Azure"},"finish_reason":null,"index":0,"logprobs":null}],"created":1741570231,"id":"chatcmpl-B9MgpqbXrSGHmRWl4ZE0VYcYDnmpu","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_b705f0c291","usage":null}

data: {"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"delta":{"content":" says hi"},"finish_reason":null,"index":0,"logprobs":null}],"created":1741570231,"id":"chatcmpl-B9MgpqbXrSGHmRWl4ZE0VYcYDnmpu","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_b705f0c291","usage":null}

data: {"choices":[{"content_filter_offsets":{"check_offset":0,"start_offset":0,"end_offset":14},"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"finish_reason":null,"index":0}],"created":0,"id":"","model":"","object":""}

data: {"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":1741570231,"id":"chatcmpl-B9MgpqbXrSGHmRWl4ZE0VYcYDnmpu","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_b705f0c291","usage":null}

data: {"choices":[],"created":1741570231,"id":"chatcmpl-B9MgpqbXrSGHmRWl4ZE0VYcYDnmpu","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_b705f0c291","usage":{"completion_tokens":3,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":24,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},"total_tokens":27}}

data: [DONE]

"#;
    check(
        raw,
        &[("token", "Azure"), ("token", " says hi")],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":24,"completion_tokens":3}}),
    )
    .await;
}

#[tokio::test]
async fn azure_content_filter_finish_reason_passes_through() {
    let raw = r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}]}

data: {"choices":[{"content_filter_results":{},"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1741570380,"id":"chatcmpl-B9MjEz1aZtUQ9ZTWvJ1dLHZ0R8tkE","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_b705f0c291"}

data: {"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"delta":{"content":"Here is how"},"finish_reason":null,"index":0,"logprobs":null}],"created":1741570380,"id":"chatcmpl-B9MjEz1aZtUQ9ZTWvJ1dLHZ0R8tkE","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_b705f0c291"}

data: {"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":true,"severity":"medium"}},"delta":{},"finish_reason":"content_filter","index":0,"logprobs":null}],"created":1741570380,"id":"chatcmpl-B9MjEz1aZtUQ9ZTWvJ1dLHZ0R8tkE","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","system_fingerprint":"fp_b705f0c291"}

data: [DONE]

"#;
    check(
        raw,
        &[("token", "Here is how")],
        json!({"finish_reason":"content_filter"}),
    )
    .await;
}

#[tokio::test]
async fn vllm_role_first_chunk_reasoning_content_and_usage_only_last_chunk() {
    let raw = r#"data: {"id":"chatcmpl-8f0d4c3e9a7b4c1d","object":"chat.completion.chunk","created":1741570500,"model":"Qwen/Qwen3-8B","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-8f0d4c3e9a7b4c1d","object":"chat.completion.chunk","created":1741570500,"model":"Qwen/Qwen3-8B","choices":[{"index":0,"delta":{"reasoning_content":"Greeting"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-8f0d4c3e9a7b4c1d","object":"chat.completion.chunk","created":1741570500,"model":"Qwen/Qwen3-8B","choices":[{"index":0,"delta":{"reasoning_content":"."},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-8f0d4c3e9a7b4c1d","object":"chat.completion.chunk","created":1741570500,"model":"Qwen/Qwen3-8B","choices":[{"index":0,"delta":{"content":"\n\n"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-8f0d4c3e9a7b4c1d","object":"chat.completion.chunk","created":1741570500,"model":"Qwen/Qwen3-8B","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-8f0d4c3e9a7b4c1d","object":"chat.completion.chunk","created":1741570500,"model":"Qwen/Qwen3-8B","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}

data: {"id":"chatcmpl-8f0d4c3e9a7b4c1d","object":"chat.completion.chunk","created":1741570500,"model":"Qwen/Qwen3-8B","choices":[],"usage":{"prompt_tokens":11,"total_tokens":16,"completion_tokens":5}}

data: [DONE]

"#;
    check(
        raw,
        &[
            ("reasoning", "Greeting"),
            ("reasoning", "."),
            ("token", "\n\n"),
            ("token", "Hi"),
        ],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":11,"completion_tokens":5}}),
    )
    .await;
}

#[tokio::test]
async fn llama_cpp_null_content_first_chunk_and_usage_with_timings_in_the_finish_chunk() {
    let raw = r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"created":1741570600,"id":"chatcmpl-Qm1bVcmYv3r9kZ2fN8wq7dXsT4eLhPaJ","model":"gpt-3.5-turbo","system_fingerprint":"b5002-2c3f8b85","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Local"}}],"created":1741570600,"id":"chatcmpl-Qm1bVcmYv3r9kZ2fN8wq7dXsT4eLhPaJ","model":"gpt-3.5-turbo","system_fingerprint":"b5002-2c3f8b85","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" model"}}],"created":1741570600,"id":"chatcmpl-Qm1bVcmYv3r9kZ2fN8wq7dXsT4eLhPaJ","model":"gpt-3.5-turbo","system_fingerprint":"b5002-2c3f8b85","object":"chat.completion.chunk"}

data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1741570600,"id":"chatcmpl-Qm1bVcmYv3r9kZ2fN8wq7dXsT4eLhPaJ","model":"gpt-3.5-turbo","system_fingerprint":"b5002-2c3f8b85","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":15,"total_tokens":17},"timings":{"prompt_n":15,"prompt_ms":40.112,"prompt_per_token_ms":2.674,"prompt_per_second":373.95,"predicted_n":2,"predicted_ms":20.4,"predicted_per_token_ms":10.2,"predicted_per_second":98.04}}

data: [DONE]

"#;
    check(
        raw,
        &[("token", "Local"), ("token", " model")],
        json!({"finish_reason":"length","usage":{"prompt_tokens":15,"completion_tokens":2}}),
    )
    .await;
}

#[tokio::test]
async fn ollama_role_in_every_delta_and_reasoning_field() {
    let raw = r#"data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1741570700,"model":"qwen3:8b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"Okay, a greeting."},"finish_reason":null}]}

data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1741570700,"model":"qwen3:8b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}

data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1741570700,"model":"qwen3:8b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":" there"},"finish_reason":null}]}

data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1741570700,"model":"qwen3:8b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}

data: {"id":"chatcmpl-417","object":"chat.completion.chunk","created":1741570700,"model":"qwen3:8b","system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":12,"total_tokens":23}}

data: [DONE]

"#;
    check(
        raw,
        &[
            ("reasoning", "Okay, a greeting."),
            ("token", "Hello"),
            ("token", " there"),
        ],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":11,"completion_tokens":12}}),
    )
    .await;
}

#[tokio::test]
async fn openrouter_processing_comments_and_reasoning_field() {
    let raw = r#": OPENROUTER PROCESSING

: OPENROUTER PROCESSING

data: {"id":"gen-1741570800-Xk2bTq9LmNpR4sVw","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chunk","created":1741570800,"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"Simple","reasoning_details":[{"type":"reasoning.text","text":"Simple","format":"unknown","index":0}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}

data: {"id":"gen-1741570800-Xk2bTq9LmNpR4sVw","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chunk","created":1741570800,"choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":" enough.","reasoning_details":[{"type":"reasoning.text","text":" enough.","format":"unknown","index":0}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}

data: {"id":"gen-1741570800-Xk2bTq9LmNpR4sVw","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chunk","created":1741570800,"choices":[{"index":0,"delta":{"role":"assistant","content":"Routed.","reasoning":null},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}

data: {"id":"gen-1741570800-Xk2bTq9LmNpR4sVw","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chunk","created":1741570800,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop","native_finish_reason":"stop","logprobs":null}]}

data: {"id":"gen-1741570800-Xk2bTq9LmNpR4sVw","provider":"DeepInfra","model":"deepseek/deepseek-r1","object":"chat.completion.chunk","created":1741570800,"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":9,"total_tokens":19,"cost":0.0000231,"is_byok":false,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":6}}}

data: [DONE]

"#;
    check(
        raw,
        &[
            ("reasoning", "Simple"),
            ("reasoning", " enough."),
            ("token", "Routed."),
        ],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":10,"completion_tokens":9}}),
    )
    .await;
}

#[tokio::test]
async fn groq_usage_in_x_groq() {
    let raw = r#"data: {"id":"chatcmpl-6a1f5b2e-3c4d-4e8f-9a0b-1c2d3e4f5a6b","object":"chat.completion.chunk","created":1741570900,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_c1a4bcec29","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"x_groq":{"id":"req_01jnzq8e2cf8b9sdx0m5k3v7yt"}}

data: {"id":"chatcmpl-6a1f5b2e-3c4d-4e8f-9a0b-1c2d3e4f5a6b","object":"chat.completion.chunk","created":1741570900,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_c1a4bcec29","choices":[{"index":0,"delta":{"content":"Fast"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-6a1f5b2e-3c4d-4e8f-9a0b-1c2d3e4f5a6b","object":"chat.completion.chunk","created":1741570900,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_c1a4bcec29","choices":[{"index":0,"delta":{"content":"."},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-6a1f5b2e-3c4d-4e8f-9a0b-1c2d3e4f5a6b","object":"chat.completion.chunk","created":1741570900,"model":"llama-3.3-70b-versatile","system_fingerprint":"fp_c1a4bcec29","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"x_groq":{"id":"req_01jnzq8e2cf8b9sdx0m5k3v7yt","usage":{"queue_time":0.020613,"prompt_tokens":40,"prompt_time":0.002015,"completion_tokens":2,"completion_time":0.007273,"total_tokens":42,"total_time":0.009288}}}

data: [DONE]

"#;
    check(
        raw,
        &[("token", "Fast"), ("token", ".")],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":40,"completion_tokens":2}}),
    )
    .await;
}

#[tokio::test]
async fn deepseek_keep_alive_comments_null_content_and_reasoning_content() {
    let raw = r#": keep-alive

data: {"id":"5f3c2a1b-8d7e-4f6a-9b0c-1d2e3f4a5b6c","object":"chat.completion.chunk","created":1741571000,"model":"deepseek-reasoner","system_fingerprint":"fp_5417b77867_prod0225","choices":[{"index":0,"delta":{"role":"assistant","content":null,"reasoning_content":""},"logprobs":null,"finish_reason":null}]}

data: {"id":"5f3c2a1b-8d7e-4f6a-9b0c-1d2e3f4a5b6c","object":"chat.completion.chunk","created":1741571000,"model":"deepseek-reasoner","system_fingerprint":"fp_5417b77867_prod0225","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"嗯，"},"logprobs":null,"finish_reason":null}]}

data: {"id":"5f3c2a1b-8d7e-4f6a-9b0c-1d2e3f4a5b6c","object":"chat.completion.chunk","created":1741571000,"model":"deepseek-reasoner","system_fingerprint":"fp_5417b77867_prod0225","choices":[{"index":0,"delta":{"content":null,"reasoning_content":"a greeting."},"logprobs":null,"finish_reason":null}]}

data: {"id":"5f3c2a1b-8d7e-4f6a-9b0c-1d2e3f4a5b6c","object":"chat.completion.chunk","created":1741571000,"model":"deepseek-reasoner","system_fingerprint":"fp_5417b77867_prod0225","choices":[{"index":0,"delta":{"content":"你好","reasoning_content":null},"logprobs":null,"finish_reason":null}]}

data: {"id":"5f3c2a1b-8d7e-4f6a-9b0c-1d2e3f4a5b6c","object":"chat.completion.chunk","created":1741571000,"model":"deepseek-reasoner","system_fingerprint":"fp_5417b77867_prod0225","choices":[{"index":0,"delta":{"content":"","reasoning_content":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":13,"completion_tokens":21,"total_tokens":34,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":18},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":13}}

data: [DONE]

"#;
    check(
        raw,
        &[
            ("reasoning", "嗯，"),
            ("reasoning", "a greeting."),
            ("token", "你好"),
        ],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":13,"completion_tokens":21}}),
    )
    .await;
}

#[tokio::test]
async fn litellm_null_fields_in_deltas_and_usage_with_the_finish() {
    let raw = r#"data: {"id":"chatcmpl-7c1e9f0a-2b3d-4c5e-8f9a-0b1c2d3e4f5a","created":1741571100,"model":"claude-3-5-haiku-20241022","object":"chat.completion.chunk","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":"Proxied","role":"assistant","function_call":null,"tool_calls":null,"audio":null},"finish_reason":null,"logprobs":null}],"citations":null}

data: {"id":"chatcmpl-7c1e9f0a-2b3d-4c5e-8f9a-0b1c2d3e4f5a","created":1741571100,"model":"claude-3-5-haiku-20241022","object":"chat.completion.chunk","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":" answer","role":null,"function_call":null,"tool_calls":null,"audio":null},"finish_reason":null,"logprobs":null}],"citations":null}

data: {"id":"chatcmpl-7c1e9f0a-2b3d-4c5e-8f9a-0b1c2d3e4f5a","created":1741571100,"model":"claude-3-5-haiku-20241022","object":"chat.completion.chunk","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":null,"role":null,"function_call":null,"tool_calls":null,"audio":null},"finish_reason":"stop","logprobs":null}],"usage":{"completion_tokens":2,"prompt_tokens":14,"total_tokens":16,"completion_tokens_details":null,"prompt_tokens_details":{"audio_tokens":null,"cached_tokens":0}}}

data: [DONE]

"#;
    check(
        raw,
        &[("token", "Proxied"), ("token", " answer")],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":14,"completion_tokens":2}}),
    )
    .await;
}

#[tokio::test]
async fn an_openai_compatible_stream_that_ends_after_its_finish_reason_without_done_completes() {
    // Some servers close the body after the finish chunk instead of sending [DONE].
    let raw = r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Short"},"finish_reason":null}]}

data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}

"#;
    check(
        raw,
        &[("token", "Short")],
        json!({"finish_reason":"stop","usage":{"prompt_tokens":4,"completion_tokens":1}}),
    )
    .await;
}
