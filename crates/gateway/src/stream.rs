//! Streamed answers: the upstream's SSE bytes go to the client untouched, while a side
//! scanner picks the final `usage` (or counts the streamed text for an estimate) and the
//! call's record is sent once the stream ends or is dropped.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::accounting::{self, Chars, Tokens, WireUsage};
use crate::{error_chain, CallRecord, Draft};

/// The longest SSE line or event the scanner buffers. Beyond it the scanner stops (the bytes
/// still pass through) and the record falls back to an estimate from what it had seen.
const MAX_EVENT: usize = 8 << 20;

/// The upstream's byte stream, metered.
pub(crate) struct Metered {
    inner: BoxStream<'static, reqwest::Result<Bytes>>,
    scanner: SseScanner,
    /// Taken when the record is sent.
    pending: Option<Pending>,
    ended: bool,
}

struct Pending {
    draft: Draft,
    /// The client's request, for the input estimate when no usage arrives.
    request: Map<String, Value>,
    record: oneshot::Sender<CallRecord>,
    /// The route's concurrency slot, held until the stream is over.
    _permit: OwnedSemaphorePermit,
}

impl Metered {
    pub fn new(
        response: reqwest::Response,
        draft: Draft,
        request: Map<String, Value>,
        record: oneshot::Sender<CallRecord>,
        permit: OwnedSemaphorePermit,
    ) -> Metered {
        Metered {
            inner: response.bytes_stream().boxed(),
            scanner: SseScanner::default(),
            pending: Some(Pending { draft, request, record, _permit: permit }),
            ended: false,
        }
    }

    /// Sends the record (once): the usage the upstream reported, or an estimate from the
    /// request and the text seen so far.
    fn finish(&mut self, interrupted: Option<String>) {
        let Some(Pending { mut draft, request, record, _permit }) = self.pending.take() else { return };
        self.scanner.end();
        let (tokens, estimated) = match self.scanner.usage {
            Some(tokens) => (tokens, false),
            None => {
                let output = accounting::chars_to_tokens(self.scanner.output_chars);
                (Tokens { input: accounting::estimate_input(&request), output, cached: 0 }, true)
            }
        };
        if let (Some(error), Some(last)) = (interrupted, draft.attempts.last_mut()) {
            last.outcome = format!("stream interrupted: {error}");
        }
        // The caller may not want the record; nothing to do then.
        let _ = record.send(draft.finish(tokens, estimated));
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                this.scanner.feed(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(error)) => {
                this.ended = true;
                this.finish(Some(error_chain(&error)));
                Poll::Ready(Some(Err(io::Error::other(error))))
            }
            None => {
                this.ended = true;
                this.finish(None);
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for Metered {
    /// The client went away mid-stream: record what was seen.
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// Reads SSE `data:` events out of arbitrary chunks (lines may span chunks; `\n`, `\r\n` and
/// `\r` end lines) and keeps the last `usage` and the count of streamed characters.
#[derive(Default)]
pub(crate) struct SseScanner {
    /// The incomplete line at the end of the last chunk.
    line: Vec<u8>,
    /// The data lines of the current event, joined by `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The last chunk ended in `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    given_up: bool,
    pub usage: Option<Tokens>,
    /// Characters of `delta.content` and tool call arguments.
    pub output_chars: u64,
}

impl SseScanner {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if self.given_up {
            return;
        }
        if std::mem::take(&mut self.after_cr) && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        while let Some(end) = chunk.iter().position(|b| *b == b'\n' || *b == b'\r') {
            if self.line.is_empty() {
                self.line_done(&chunk[..end]);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[..end]);
                self.line_done(&line);
                line.clear();
                self.line = line;
            }
            let mut next = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            chunk = &chunk[next..];
        }
        if self.line.len() + chunk.len() > MAX_EVENT {
            self.give_up();
            return;
        }
        self.line.extend_from_slice(chunk);
    }

    /// The stream ended: an unterminated last line or event still counts.
    pub fn end(&mut self) {
        if self.given_up {
            return;
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line);
        }
        self.dispatch();
    }

    fn line_done(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &[][..]),
        };
        // Comments (`: ...`), `event:`, `id:` and `retry:` carry nothing to count.
        if field != b"data" {
            return;
        }
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.data.len() + value.len() >= MAX_EVENT {
            self.give_up();
            return;
        }
        if self.has_data {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
    }

    fn dispatch(&mut self) {
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        self.event(&data);
        data.clear();
        self.data = data;
    }

    fn event(&mut self, data: &[u8]) {
        if data == b"[DONE]" {
            return;
        }
        // Not ours to judge: a chunk we cannot read passes through and counts for nothing.
        let Ok(chunk) = serde_json::from_slice::<StreamChunk>(data) else { return };
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        for delta in chunk.choices.into_iter().flatten().filter_map(|c| c.delta) {
            self.output_chars += delta.content.map_or(0, |c| c.0);
            for call in delta.tool_calls.into_iter().flatten() {
                self.output_chars += call.function.and_then(|f| f.arguments).map_or(0, |a| a.0);
            }
        }
    }

    fn give_up(&mut self) {
        tracing::debug!("SSE line or event over {MAX_EVENT} bytes; the call's tokens will be estimated");
        self.given_up = true;
        self.usage = None;
        self.line = Vec::new();
        self.data = Vec::new();
    }
}

/// The parts of a `chat.completion.chunk` that accounting needs; the text is counted, not kept.
#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Option<Vec<StreamChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<Chars>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    arguments: Option<Chars>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        ": keep-alive\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\r\r",
        "event: message\n",
        "data: {\"choices\":[],\n",
        "data: \"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
        "data: [DONE]\n\n",
    );

    fn scan(pieces: &[&[u8]]) -> SseScanner {
        let mut scanner = SseScanner::default();
        for piece in pieces {
            scanner.feed(piece);
        }
        scanner.end();
        scanner
    }

    #[test]
    fn reads_usage_and_text_whatever_the_chunk_boundaries() {
        let bytes = STREAM.as_bytes();
        let whole = scan(&[bytes]);
        assert_eq!(whole.usage, Some(Tokens { input: 11, output: 7, cached: 2 }));
        assert_eq!(whole.output_chars, 3 + 4 + 2);

        let one_byte_at_a_time: Vec<&[u8]> = bytes.chunks(1).collect();
        let split = scan(&one_byte_at_a_time);
        assert_eq!((split.usage, split.output_chars), (whole.usage, whole.output_chars));
        for cut in 1..bytes.len() {
            let split = scan(&[&bytes[..cut], &bytes[cut..]]);
            assert_eq!((split.usage, split.output_chars), (whole.usage, whole.output_chars), "cut at {cut}");
        }
    }

    #[test]
    fn an_unterminated_last_event_still_counts() {
        let scanner = scan(&[b"data: {\"choices\":[{\"delta\":{\"content\":\"abcde\"}}]}"]);
        assert_eq!((scanner.usage, scanner.output_chars), (None, 5));
    }

    #[test]
    fn gives_up_on_an_endless_line_instead_of_buffering_it() {
        let mut scanner = SseScanner::default();
        let big = vec![b'x'; MAX_EVENT / 2 + 1];
        scanner.feed(b"data: ");
        scanner.feed(&big);
        scanner.feed(&big);
        scanner.feed(b"\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
        scanner.end();
        assert!(scanner.given_up);
        assert_eq!(scanner.usage, None);
        assert!(scanner.line.capacity() == 0 && scanner.data.capacity() == 0);
    }
}
