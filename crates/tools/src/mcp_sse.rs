//! The older MCP HTTP+SSE transport (protocol revision 2024-11-05), used
//! when a server does not speak streamable HTTP: `GET url` opens an event
//! stream whose first `endpoint` event names where to `POST` messages;
//! replies and notifications arrive as `message` events. The Rust SDK no
//! longer ships a client for it, so this adapts it to the SDK's
//! sink-and-stream transport.

use futures_util::StreamExt;
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::ToolError;

/// Messages buffered in each direction.
const BUFFER: usize = 64;

/// Opens the event stream at `url` and returns the transport halves.
/// The two background tasks end when the connection is dropped.
pub async fn connect(
    http: reqwest::Client,
    url: &str,
    headers: reqwest::header::HeaderMap,
) -> Result<(PollSender<TxJsonRpcMessage<RoleClient>>, tokio_stream_shim::Receiver<RxJsonRpcMessage<RoleClient>>), ToolError> {
    let unavailable = |e: String| ToolError::Unavailable(format!("MCP SSE {url}: {e}"));
    let resp = http
        .get(url)
        .headers(headers.clone())
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!("HTTP {}", resp.status().as_u16())));
    }
    let mut events = eventsource_stream::EventStream::new(resp.bytes_stream());
    let endpoint = loop {
        match events.next().await {
            Some(Ok(ev)) if ev.event == "endpoint" => break resolve(url, ev.data.trim()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(unavailable(e.to_string())),
            None => return Err(unavailable("the stream ended before naming an endpoint".into())),
        }
    };

    let (in_tx, in_rx) = mpsc::channel::<RxJsonRpcMessage<RoleClient>>(BUFFER);
    tokio::spawn(async move {
        while let Some(Ok(ev)) = events.next().await {
            if ev.event != "message" && !ev.event.is_empty() {
                continue;
            }
            match serde_json::from_str(&ev.data) {
                Ok(msg) => {
                    if in_tx.send(msg).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable MCP SSE message"),
            }
        }
    });

    let (out_tx, mut out_rx) = mpsc::channel::<TxJsonRpcMessage<RoleClient>>(BUFFER);
    tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let sent = http.post(&endpoint).headers(headers.clone()).json(&msg).send().await;
            if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                tracing::warn!(error = %e, "MCP SSE post failed");
            }
        }
    });
    Ok((PollSender::new(out_tx), tokio_stream_shim::Receiver(in_rx)))
}

/// The endpoint named by the server, made absolute against the stream URL.
fn resolve(stream_url: &str, endpoint: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return endpoint.to_owned();
    }
    let origin_end = stream_url
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| stream_url[start..].find('/').map(|j| start + j))
        .unwrap_or(stream_url.len());
    format!("{}{}", &stream_url[..origin_end], if endpoint.starts_with('/') { endpoint.to_owned() } else { format!("/{endpoint}") })
}

/// A `Stream` over a Tokio receiver.
pub mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct Receiver<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_util::Stream for Receiver<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_resolve_against_the_stream_origin() {
        assert_eq!(super::resolve("http://h:1/sse", "/messages/?session_id=x"), "http://h:1/messages/?session_id=x");
        assert_eq!(super::resolve("http://h:1/sse", "http://o:2/m"), "http://o:2/m");
        assert_eq!(super::resolve("http://h:1", "m"), "http://h:1/m");
    }
}
