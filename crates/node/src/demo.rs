//! `gateway demo-backend`: a small HTTP server to put behind the gateway in demos and tests.
//! It answers `<method> from NAME` so a caller sees which backend served it.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub async fn run(listen: &str, name: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let name: std::sync::Arc<str> = name.into();
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let body = format!(
                    "{} from {}\n",
                    req.method().as_str().to_ascii_lowercase(),
                    name
                );
                let name = name.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "text/plain")
                            .header("x-backend", name.as_ref())
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response parts are valid"),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
