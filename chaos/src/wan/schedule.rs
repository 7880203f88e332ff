//! Schedule files: timed changes of an emulator's settings.
//!
//! Grammar (one event per line; `#` starts a comment; blank lines ignored):
//!
//! ```text
//! line      := TIME [DIRECTION] item+
//! DIRECTION := forward | backward | both            (default: both)
//! item      := partition [for DURATION]             (heals DURATION later)
//!            | heal
//!            | reset                                (all settings back to defaults)
//!            | delay DURATION
//!            | jitter DURATION [uniform | normal]
//!            | loss PROB
//!            | burst PROB PROB PROB                 (p_enter_bad p_leave_bad loss_in_bad)
//!            | reorder PROB [by DURATION]
//!            | duplicate PROB
//!            | rate RATE                            (e.g. 10mbit, 500kbit, 1gbit, 8000bit, off)
//!            | queue BYTES                          (e.g. 64kb, 1mb, 1500)
//!            | set JSON                             (rest of the line: a settings patch)
//! TIME, DURATION := NUMBER (ms | s | m)             e.g. 250ms, 10s, 1.5m
//! PROB      := NUMBER%  or a fraction in [0, 1]     e.g. 2%, 0.02
//! ```
//!
//! Times are offsets from the start of the run. Examples:
//!
//! ```text
//! 0s delay 40ms jitter 5ms normal
//! 10s partition for 20s
//! 30s loss 2%
//! 45s forward rate 10mbit queue 256kb
//! ```
//!
//! A parse error names the line number ([`WanError::Schedule`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{Settings, WanControl, WanError};

/// Most events a schedule may hold (a bound on the runner's loop).
pub const MAX_EVENTS: usize = 100_000;

/// What an event does.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleAction {
    /// Apply a settings patch (see [`Settings::patched`]).
    Patch(Value),
    /// Restore the default settings.
    Reset,
}

/// One timed change.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleEvent {
    /// Offset from the start of the run.
    pub at: Duration,
    /// 1-based line it came from.
    pub line: usize,
    pub action: ScheduleAction,
}

/// A parsed schedule, events sorted by time (file order among equal times).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schedule {
    pub events: Vec<ScheduleEvent>,
}

/// Parses `10s`, `250ms`, `1.5m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(format!("duration {text:?} needs a unit (ms, s or m)"));
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad number in duration {text:?}"))?;
    if !value.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&(value * scale)) {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let value = if let Some(p) = text.strip_suffix('%') {
        p.parse::<f64>()
            .map_err(|_| format!("bad percentage {text:?}"))?
            / 100.0
    } else {
        text.parse::<f64>()
            .map_err(|_| format!("bad probability {text:?} (use 2% or 0.02)"))?
    };
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("probability {text:?} is not within 0..100%"));
    }
    Ok(value)
}

fn parse_rate(text: &str) -> Result<u64, String> {
    if text == "off" || text == "unlimited" {
        return Ok(0);
    }
    let lower = text.to_ascii_lowercase();
    let (number, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n, *scale)))
        .ok_or_else(|| format!("rate {text:?} needs a unit (bit, kbit, mbit, gbit) or off"))?;
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad number in rate {text:?}"))?;
    if !value.is_finite() || value <= 0.0 || value * scale > 1e12 {
        return Err(format!("rate {text:?} out of range"));
    }
    Ok((value * scale) as u64)
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let (number, scale) = [
        ("gb", 1u64 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("b", 1),
    ]
    .iter()
    .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n, *scale)))
    .unwrap_or((lower.as_str(), 1));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("bad byte count {text:?}"))?;
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("byte count {text:?} out of range"))
}

fn millis_value(d: Duration) -> Value {
    json!(d.as_secs_f64() * 1000.0)
}

impl Schedule {
    /// Parses a schedule file's text.
    pub fn parse(text: &str) -> Result<Schedule, WanError> {
        let mut events = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            parse_line(content, line, &mut events)
                .map_err(|message| WanError::Schedule { line, message })?;
            if events.len() > MAX_EVENTS {
                return Err(WanError::Schedule {
                    line,
                    message: format!("more than {MAX_EVENTS} events"),
                });
            }
        }
        events.sort_by_key(|e| e.at);
        Ok(Schedule { events })
    }

    /// Applies each event at `start + at` (events already due are applied at once). Returns
    /// the first error (an invalid patch), naming its line.
    pub async fn run(self, control: Arc<WanControl>, start: Instant) -> Result<(), WanError> {
        for event in &self.events {
            tokio::time::sleep_until(tokio::time::Instant::from_std(start + event.at)).await;
            apply(&control, event)?;
        }
        Ok(())
    }
}

/// Applies one event now.
pub fn apply(control: &WanControl, event: &ScheduleEvent) -> Result<(), WanError> {
    let result = match &event.action {
        ScheduleAction::Patch(patch) => control.patch(patch).map(|_| ()),
        ScheduleAction::Reset => control.set_settings(Settings::default()),
    };
    result.map_err(|e| WanError::Schedule {
        line: event.line,
        message: e.to_string(),
    })
}

fn parse_line(content: &str, line: usize, events: &mut Vec<ScheduleEvent>) -> Result<(), String> {
    let mut words = content.split_whitespace().peekable();
    let at = parse_duration(words.next().unwrap_or_default())?;
    let scope = match words.peek().copied() {
        Some(d @ ("forward" | "backward" | "both")) => {
            words.next();
            d
        }
        _ => "both",
    };
    let mut fields = Map::new();
    let mut extra = Vec::new();
    let mut any = false;
    let need = |word: Option<&str>, what: &str, item: &str| {
        word.map(str::to_string)
            .ok_or_else(|| format!("`{item}` needs {what}"))
    };
    while let Some(item) = words.next() {
        any = true;
        match item {
            "partition" => {
                fields.insert("partitioned".into(), json!(true));
                if words.peek() == Some(&"for") {
                    words.next();
                    let length = parse_duration(&need(words.next(), "a duration", "for")?)?;
                    extra.push(ScheduleEvent {
                        at: at + length,
                        line,
                        action: ScheduleAction::Patch(json!({ scope: { "partitioned": false } })),
                    });
                }
            }
            "heal" => {
                fields.insert("partitioned".into(), json!(false));
            }
            "reset" => {
                events.push(ScheduleEvent {
                    at,
                    line,
                    action: ScheduleAction::Reset,
                });
            }
            "delay" => {
                let d = parse_duration(&need(words.next(), "a duration", item)?)?;
                fields.insert("delay_ms".into(), millis_value(d));
            }
            "jitter" => {
                let d = parse_duration(&need(words.next(), "a duration", item)?)?;
                fields.insert("jitter_ms".into(), millis_value(d));
                if let Some(dist @ ("uniform" | "normal")) = words.peek().copied() {
                    words.next();
                    fields.insert("jitter_distribution".into(), json!(dist));
                }
            }
            "uniform" | "normal" => {
                fields.insert("jitter_distribution".into(), json!(item));
            }
            "loss" => {
                let p = parse_probability(&need(words.next(), "a probability", item)?)?;
                fields.insert("loss".into(), json!(p));
            }
            "burst" => {
                let mut p = [0.0; 3];
                for slot in &mut p {
                    *slot = parse_probability(&need(
                        words.next(),
                        "three probabilities (enter, leave, loss in bad)",
                        item,
                    )?)?;
                }
                fields.insert(
                    "burst".into(),
                    json!({"p_enter_bad": p[0], "p_leave_bad": p[1], "loss_in_bad": p[2]}),
                );
            }
            "reorder" => {
                let p = parse_probability(&need(words.next(), "a probability", item)?)?;
                fields.insert("reorder".into(), json!(p));
                if words.peek() == Some(&"by") {
                    words.next();
                    let d = parse_duration(&need(words.next(), "a duration", "by")?)?;
                    fields.insert("reorder_delay_ms".into(), millis_value(d));
                }
            }
            "duplicate" => {
                let p = parse_probability(&need(words.next(), "a probability", item)?)?;
                fields.insert("duplicate".into(), json!(p));
            }
            "rate" => {
                let r = parse_rate(&need(words.next(), "a rate", item)?)?;
                fields.insert("rate_bps".into(), json!(r));
            }
            "queue" => {
                let b = parse_bytes(&need(words.next(), "a byte count", item)?)?;
                fields.insert("queue_limit_bytes".into(), json!(b));
            }
            "set" => {
                let rest: Vec<&str> = words.by_ref().collect();
                let patch: Value = serde_json::from_str(&rest.join(" "))
                    .map_err(|e| format!("`set` needs a JSON object: {e}"))?;
                events.push(ScheduleEvent {
                    at,
                    line,
                    action: ScheduleAction::Patch(patch),
                });
            }
            other => return Err(format!("unknown item {other:?}")),
        }
    }
    if !any {
        return Err("a time must be followed by at least one item".to_string());
    }
    if !fields.is_empty() {
        // Check the patch now so that a bad value fails at parse time, naming the line.
        let patch = json!({ scope: Value::Object(fields) });
        Settings::default()
            .patched(&patch)
            .map_err(|e| e.to_string())?;
        events.push(ScheduleEvent {
            at,
            line,
            action: ScheduleAction::Patch(patch),
        });
    }
    events.extend(extra);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        let s = Schedule::parse(
            "# a comment\n0s delay 40ms jitter 5ms normal\n10s partition for 20s\n30s loss 2%\n\
             45s forward rate 10mbit queue 256kb\n50s burst 1% 10% 50% duplicate 0.01 reorder 1% by 20ms\n",
        )
        .unwrap();
        let times: Vec<u64> = s.events.iter().map(|e| e.at.as_secs()).collect();
        assert_eq!(times, vec![0, 10, 30, 30, 45, 50]);
        let mut settings = Settings::default();
        for e in &s.events {
            if let ScheduleAction::Patch(p) = &e.action {
                settings = settings.patched(p).unwrap();
            }
        }
        assert_eq!(settings.backward.delay_ms, 40.0);
        assert_eq!(settings.backward.jitter_ms, 5.0);
        assert_eq!(settings.forward.loss, 0.02);
        assert!(!settings.forward.partitioned);
        assert_eq!(settings.forward.rate_bps, 10_000_000);
        assert_eq!(settings.backward.rate_bps, 0);
        assert_eq!(settings.forward.queue_limit_bytes, 256 << 10);
        assert_eq!(settings.forward.burst.loss_in_bad, 0.5);
        assert_eq!(settings.forward.reorder_delay_ms, 20.0);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("0s delay 40ms\n5 loss 2%\n", 2),
            ("0s delay 40ms\n\n# x\n5s loss 200%\n", 4),
            ("1s frobnicate\n", 1),
            ("1s partition for\n", 1),
        ] {
            match Schedule::parse(text) {
                Err(WanError::Schedule { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
