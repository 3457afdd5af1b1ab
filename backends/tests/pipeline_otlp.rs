//! One job is one trace: a 3-stage embedded job, with span export to a real OTLP/gRPC
//! receiver (`fake-opentelemetry-collector`), lands as the upload's root span with decode,
//! separate and encode chained under it, all with one trace id. Its own test binary: the
//! tracing subscriber is global to the process.

#![allow(clippy::unwrap_used)] // a test that unwraps fails; the service must not (workspace lint)

mod embedded_pipeline;

use std::time::Duration;

use embedded_pipeline::{MODEL, Pipeline};
use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use observe::{LogFormat, OtlpProtocol, OtlpSettings};
use pipeline::JobState;
use tracing::Instrument;

fn named<'a>(spans: &'a [ExportedSpan], name: &str) -> &'a ExportedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span {name} expected: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_is_one_trace_across_its_stages() {
    let mut collector = FakeCollectorServer::start()
        .await
        .expect("OTLP receiver started");
    let telemetry = observe::init_tracing(
        LogFormat::Text,
        "info",
        Some(OtlpSettings {
            endpoint: Some(collector.endpoint()),
            protocol: OtlpProtocol::Grpc,
            service_name: "msaas-test".into(),
        }),
    )
    .expect("tracing installed");
    assert!(telemetry.exporting());

    let pipeline = Pipeline::start();
    // Stands in for ingest's upload span: the job's trace starts there.
    let upload = tracing::info_span!("ingest.upload", otel.kind = "server");
    let traceparent = upload
        .in_scope(observe::trace::current_traceparent)
        .expect("a traced span has a traceparent");
    let job = pipeline
        .submit(MODEL, Some(traceparent.clone()))
        .instrument(upload)
        .await;
    let job = pipeline.wait(&job).await;
    assert_eq!(job.state, JobState::Done);
    pipeline.stop().await;
    // Flushes every buffered span to the receiver.
    drop(telemetry);

    let spans = collector.exported_spans(4, Duration::from_secs(20)).await;
    let upload = named(&spans, "ingest.upload");
    let decode = named(&spans, "stage.decode");
    let separate = named(&spans, "stage.separate");
    let encode = named(&spans, "stage.encode");

    let trace_id = observe::trace::trace_id_of(&traceparent).expect("well-formed traceparent");
    for span in [upload, decode, separate, encode] {
        assert_eq!(span.trace_id, trace_id, "{} is in another trace", span.name);
    }
    assert!(upload.parent_span_id.is_empty(), "the upload is the root");
    assert_eq!(
        decode.parent_span_id, upload.span_id,
        "decode under the upload"
    );
    assert_eq!(
        separate.parent_span_id, decode.span_id,
        "separate under decode"
    );
    assert_eq!(
        encode.parent_span_id, separate.span_id,
        "encode under separate"
    );

    for (span, stage) in [
        (decode, "decode"),
        (separate, "separate"),
        (encode, "encode"),
    ] {
        let attribute = |key: &str| span.attributes.get(key).cloned().unwrap_or_default();
        assert!(
            attribute("msaas.job_id").contains(job.id.as_str()),
            "{span:#?}"
        );
        assert!(attribute("msaas.stage").contains(stage), "{span:#?}");
        assert!(attribute("msaas.tenant").contains("tenant-a"), "{span:#?}");
        assert!(attribute("msaas.model").contains(MODEL), "{span:#?}");
        assert!(attribute("msaas.attempt").contains('1'), "{span:#?}");
    }
    // Decode learnt the audio's duration; the later stages carry it.
    assert!(
        separate
            .attributes
            .contains_key("msaas.audio_duration_secs"),
        "{separate:#?}"
    );
    assert!(
        encode
            .attributes
            .get("msaas.outcome")
            .is_some_and(|v| v.contains("done")),
        "{encode:#?}"
    );
}
