//! JSON log lines with the current trace: `"trace_id"` and `"span_id"` as top-level fields.

use std::fmt;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a JSON event format: when the event happens inside a traced span, the line gets
/// `"trace_id"` and `"span_id"` of that span (W3C hex, as a trace backend shows them).
///
/// The ids come from the OpenTelemetry context that the `tracing-opentelemetry` layer makes
/// current while a span is entered, so they exist only when that layer is installed
/// (tracing on, see [`traces`](super::traces)); without it lines are exactly the inner
/// format's.
pub struct WithTraceIds<F>(pub F);

/// The trace and span of the current OpenTelemetry context, if valid.
pub fn current_ids() -> Option<(TraceId, SpanId)> {
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    })
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_ids(&line, trace_id, span_id))
    }
}

/// `{…}\n` → `{…,"trace_id":"…","span_id":"…"}\n`.
fn with_ids(line: &str, trace_id: TraceId, span_id: SpanId) -> String {
    let ids = format!("\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"");
    match line.rfind('}') {
        Some(end) => {
            let (object, rest) = (&line[..end], &line[end + 1..]);
            let sep = if object.trim_end().ends_with('{') { "" } else { "," };
            format!("{object}{sep}{ids}}}{rest}")
        }
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_into_the_object() {
        let (t, s) = (TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(), SpanId::from_hex("b7ad6b7169203331").unwrap());
        assert_eq!(
            with_ids("{\"level\":\"INFO\"}\n", t, s),
            "{\"level\":\"INFO\",\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\",\"span_id\":\"b7ad6b7169203331\"}\n"
        );
        assert_eq!(with_ids("{}", t, s), "{\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\",\"span_id\":\"b7ad6b7169203331\"}");
    }
}
