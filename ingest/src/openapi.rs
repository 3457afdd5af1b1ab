//! The OpenAPI 3.0 document served at `/openapi.json`, written by hand. A test checks that
//! it names exactly the routes [`crate::ROUTES`] lists and that each of them answers.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn job_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}})
}

fn path_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
}

fn common_errors() -> Value {
    json!({
        "401": error_response("missing or invalid API key (`unauthorized`)"),
        "404": error_response("no such job, or another tenant's (`not_found`)"),
        "503": error_response("storage or queue unavailable; or too many open connections (`overloaded`, with `Retry-After`)"),
    })
}

fn with_common(mut responses: Value) -> Value {
    if let (Some(target), Value::Object(common)) = (responses.as_object_mut(), common_errors()) {
        for (status, response) in common {
            target.entry(status).or_insert(response);
        }
    }
    responses
}

fn stem_download() -> Value {
    json!({
        "description": "the stem file (single byte ranges supported)",
        "content": {
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "audio/flac": {"schema": {"type": "string", "format": "binary"}},
            "audio/mpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    })
}

/// The document.
pub fn openapi() -> Value {
    let upload_parameters: Vec<Value> = vec![
        query_parameter(
            "model",
            "model name (GET /v1/models); default: the server's",
        ),
        query_parameter("stems", "comma-separated stems to return; default: all"),
        query_parameter(
            "two_stems",
            "return this stem and the sum of the others (no_<stem>)",
        ),
        query_parameter("format", "wav | flac | mp3"),
        query_parameter("bitrate", "mp3 CBR kbit/s (128..320) or VBR quality v0..v9"),
        query_parameter("wav_format", "i16 | i24 | f32 (wav/flac sample format)"),
        query_parameter(
            "callback_url",
            "http(s) URL POSTed the job JSON when it ends (signed: X-Msaas-Signature)",
        ),
        query_parameter("filename", "name of the song (raw uploads)"),
        json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255},
               "description": "a retried request with the same key gets the same job (200)"}),
    ];
    let job_id = path_parameter("id", "job id (UUID)");
    let hash = path_parameter("hash", "job id (UUID)");
    let mut document = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "MSaaS — Music Separation as a Service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Upload a song, follow its job, download its stems. Errors are {\"error\":{\"code\",\"message\"}} with a stable code.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Upload a song (raw audio body, or multipart/form-data with a `file` field and option fields)",
                    "parameters": upload_parameters,
                    "requestBody": {"required": true, "content": {
                        "audio/*": {"schema": {"type": "string", "format": "binary"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "model": {"type": "string"}, "stems": {"type": "string"}, "two_stems": {"type": "string"},
                            "format": {"type": "string"}, "bitrate": {"type": "string"}, "wav_format": {"type": "string"},
                            "callback_url": {"type": "string"}}}},
                    }},
                    "responses": with_common(json!({
                        "202": job_response("job created and queued"),
                        "200": job_response("an earlier job: same Idempotency-Key, or the same bytes and options (dedup)"),
                        "400": error_response("malformed request, unknown parameter, empty body (`bad_request`, `empty_input`)"),
                        "413": error_response("upload over the size limit (`payload_too_large`)"),
                        "415": error_response("not audio (`unsupported_media_type`)"),
                        "422": error_response("unknown model / stem / format, invalid options (`invalid_option`)"),
                        "429": error_response("a tenant cap reached: jobs not finished, uploads per minute (`rate_limited`, with `Retry-After`)"),
                    })),
                },
                "get": {
                    "summary": "The caller's jobs, newest first",
                    "parameters": [query_parameter("limit", "1..=1000, default 50")],
                    "responses": with_common(json!({"200": {"description": "jobs", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}}}}}})),
                },
            },
            "/v1/jobs/{id}": {
                "parameters": [job_id],
                "get": {"summary": "A job", "responses": with_common(json!({"200": job_response("the job")}))},
                "delete": {"summary": "Cancel (if running) and delete a job with its files",
                           "responses": with_common(json!({"204": {"description": "deleted"}}))},
            },
            "/v1/jobs/{id}/stems/{stem}": {
                "parameters": [path_parameter("id", "job id (UUID)"), path_parameter("stem", "stem name ([a-z0-9_]+)")],
                "get": {"summary": "Download a stem", "parameters": [
                            {"name": "Range", "in": "header", "required": false, "schema": {"type": "string"}}],
                        "responses": with_common(json!({
                            "200": stem_download(), "206": stem_download(),
                            "409": error_response("the job is not done yet (`conflict`)")}))},
            },
            "/v1/jobs/{id}/events": {
                "parameters": [path_parameter("id", "job id (UUID)")],
                "get": {"summary": "Server-sent events: `snapshot`, then queued / stage_started / stage_finished / progress / retrying, ending with done / failed / cancelled",
                        "responses": with_common(json!({"200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}))},
            },
            "/v1/models": {
                "get": {"summary": "Models callers may name", "responses": with_common(json!({"200": {"description": "models", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"default": {"type": "string"}, "models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}}}}}}))},
            },
            "/": {"get": {"summary": "The web UI (load balancers probe it: always 200)", "security": [], "responses": {"200": {"description": "text/html", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/healthz": {"get": {"summary": "The process is up", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "The backends answer", "security": [], "responses": {
                "200": {"description": "ready"}, "503": error_response("a backend does not answer")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text exposition)", "security": [], "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3 document"}}}},
            "/apiv1/separate": {
                "post": {"summary": "Legacy upload: base64 audio in JSON",
                         "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["mp3"], "properties": {
                             "mp3": {"type": "string", "format": "byte"}, "model": {"type": "string"}, "songhash": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"},
                             "callback": {"oneOf": [{"type": "string"}, {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}, "data": {}}}]},
                             "name": {"type": "string"}}}}}},
                         "responses": with_common(json!({"200": {"description": "queued", "content": {"application/json": {"schema": {"type": "object", "properties": {
                             "hash": {"type": "string"}, "status": {"type": "string"}, "model": {"type": "string"}, "reason": {"type": "string"}}}}}},
                             "400": error_response("bad JSON or base64 (`bad_request`)"),
                             "413": error_response("too large"), "415": error_response("not audio"), "422": error_response("unknown model"),
                             "429": error_response("a tenant cap reached (`rate_limited`, with `Retry-After`)")}))},
            },
            "/apiv1/queue": {"get": {"summary": "Legacy: the caller's jobs", "responses": with_common(json!({"200": {"description": "queue"}}))}},
            "/apiv1/track/{hash}/{track}": {
                "parameters": [hash.clone(), path_parameter("track", "stem name, optionally with its extension")],
                "get": {"summary": "Legacy: download a stem", "responses": with_common(json!({"200": stem_download(), "409": error_response("not done yet")}))},
            },
            "/apiv1/remove/{hash}/{track}": {
                "parameters": [hash, path_parameter("track", "stem name, or `all` for the whole job")],
                "get": {"summary": "Legacy: delete a stem (or the job)", "responses": with_common(json!({"200": {"description": "removed"}}))},
                "delete": {"summary": "Legacy: delete a stem (or the job)", "responses": with_common(json!({"200": {"description": "removed"}}))},
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string", "description": "stable error code, e.g. not_found, payload_too_large"},
                    "message": {"type": "string"}}}}},
                "Model": {"type": "object", "properties": {"name": {"type": "string"}, "family": {"type": "string"},
                          "sources": {"type": "array", "items": {"type": "string"}}, "description": {"type": "string"}}},
                "Job": {"type": "object", "required": ["id", "state", "links"], "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "state": {"type": "string", "enum": ["queued", "decoding", "separating", "encoding", "done", "failed", "cancelled"]},
                    "tenant": {"type": "string"}, "model": {"type": "string"}, "source_name": {"type": "string"},
                    "options": {"type": "object"},
                    "stems": {"type": "array", "items": {"type": "string"}},
                    "created_ms": {"type": "integer"}, "updated_ms": {"type": "integer"},
                    "stages": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                        "started_ms": {"type": "integer", "nullable": true}, "finished_ms": {"type": "integer", "nullable": true}}}},
                    "attempt": {"type": "integer"},
                    "error": {"type": "object", "nullable": true, "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                    "sha256": {"type": "string", "nullable": true},
                    "links": {"type": "object", "properties": {"self": {"type": "string"}, "events": {"type": "string"},
                              "stems": {"type": "object", "additionalProperties": {"type": "string"}}}},
                }},
            },
        },
    });
    // Added apart: one json! literal this size reaches the macro recursion limit.
    document["paths"]["/ui/{file}"] = json!({"get": {
        "summary": "A script or style sheet of the web UI", "security": [],
        "parameters": [{"name": "file", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "the file"}, "404": error_response("no such file")}}});
    document
}
