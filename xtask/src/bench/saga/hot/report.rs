//! The hot phase in words: the console's lines, the report's section and its chart.

use std::fmt::Write as _;

use conveyor_benchkit::{Chart, Series};

use super::Hot;
use crate::bench::saga::report::{met, opt, pct};

fn mark(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "?",
    }
}

fn rate_text(h: &Hot) -> String {
    match (h.targets.rate_ratio, h.spread_rate) {
        (Some(r), Some(spread)) if h.sustained => format!("{} (sustained at the spread rate, {spread:.0}/s; no higher rate is tried)", pct(r)),
        (Some(r), Some(spread)) => format!("{} ({:.0} ended/s of the spread rate {spread:.0}/s: not sustained)", pct(r), h.hot_rate),
        _ => "n/a (no spread rate was sustained)".to_owned(),
    }
}

fn latency_text(h: &Hot) -> String {
    let l = h.latency_ms;
    format!(
        "p50 {} / p99 {} / max {} ms{}",
        opt(l.map(|l| l.p50), 1),
        opt(l.map(|l| l.p99), 1),
        opt(l.map(|l| l.max), 1),
        if h.orders.not_terminal > 0 { format!("; {} orders never ended", h.orders.not_terminal) } else { String::new() }
    )
}

fn deadlocks_text(h: &Hot) -> String {
    let by: Vec<String> = h.deadlocks.iter().filter(|(_, n)| **n > 0).map(|(db, n)| format!("{db} {n}")).collect();
    if by.is_empty() { "0".to_owned() } else { format!("{} ({})", h.targets.deadlocks, by.join(", ")) }
}

fn sold_text(h: &Hot) -> String {
    let sold: i64 = h.items.iter().map(|i| i.sold).sum();
    let stock: i64 = h.items.iter().map(|i| i.stock).sum();
    let asked: i64 = h.items.iter().map(|i| i.asked).sum();
    format!("{sold} units sold of {stock} in stock ({asked} asked){}", if h.targets.sold_met { "; every item adds up" } else { "" })
}

fn releases_text(h: &Hot) -> String {
    let r = &h.releases;
    if r.declined == 0 {
        return format!("no payment was declined (--hot-decline-share 0?); {} cancelled orders still hold units", h.orders.stuck_releases);
    }
    format!(
        "{} payments declined, {} released; {} cancelled orders still hold units; {} releases waiting in stock's inbox, {} dead; declined → released {}",
        r.declined,
        r.released,
        h.orders.stuck_releases,
        r.pending,
        r.dead,
        r.latency_ms.map_or("n/a".to_owned(), |l| format!("p50 {:.1} / p99 {:.1} / max {:.1} ms", l.p50, l.p99, l.max))
    )
}

/// The lines printed when the phase is over.
pub fn console(h: &Hot) -> String {
    let o = &h.orders;
    let t = &h.targets;
    let mut s = format!(
        "   offered {:.0}/s for {:.0} s: {} placed → {} confirmed, {} out of stock, {} payment declined, {} not ended{}; ended {:.0}/s over the second half: {}\n",
        h.rate,
        h.drive.seconds,
        o.placed,
        o.confirmed,
        o.out_of_stock,
        o.payment_declined,
        o.not_terminal,
        h.sold_out_after_s.map_or(String::new(), |t| format!("; sold out after {t:.1} s")),
        h.ended_per_sec,
        h.failure.as_ref().map_or("✓ sustained".to_owned(), |f| format!("✗ {f}"))
    );
    let _ = writeln!(s, "   {} hot rate ÷ spread rate: {} (target ≥ {})", mark(t.rate_met), rate_text(h), pct(t.rate_ratio_min));
    let _ = writeln!(s, "   {} placed → ended: {} (target p99 ≤ {:.0} ms)", mark(t.p99_met), latency_text(h), t.p99_ms_max);
    let _ = writeln!(s, "   {} deadlocks: {}", mark(Some(t.deadlocks_met)), deadlocks_text(h));
    let _ = writeln!(s, "   {} units: {}", mark(Some(t.sold_met)), sold_text(h));
    for p in &t.sold_problems {
        let _ = writeln!(s, "       {p}");
    }
    let _ = writeln!(s, "   {} releases: {}", mark(Some(t.releases_met)), releases_text(h));
    let _ = write!(s, "   hot products: {}", if t.all_met { "every target met" } else { "NOT every target met" });
    s
}

/// The report's section.
pub fn markdown(h: &Hot, spread_products: usize) -> String {
    let t = &h.targets;
    let yes = |b: bool| met(Some(b));
    let mut s = String::from("\n## Hot products (a flash sale)\n\n");
    let _ = writeln!(
        s,
        "{} fresh products with {} units each; orders of 1–{} lines × 1–{} units over only these, open loop, at {:.0} orders/s ({}) for {:.0} s; {} customers, {} of them with an empty balance (their payments are declined and stock releases their reservations during the sale). Measured from the databases once every order had ended and every message was handled ({:.1} s after the schedule). The phase is sustained by the ramp's rules with a cancelled order counting as ended (out of stock is the right answer once the stock is gone).{}\n",
        h.products.len(),
        h.stock,
        h.max_lines,
        h.max_quantity,
        h.rate,
        h.spread_rate.map_or("the ramp's first rate: none was sustained".to_owned(), |r| format!("the highest rate sustained with one-unit orders spread over {spread_products} products, {r:.0}/s")),
        h.drive.seconds,
        h.customers,
        h.broke_customers,
        h.drain_s,
        h.failure.as_ref().map(|f| format!(" This phase was NOT sustained: {f}.")).unwrap_or_default()
    );
    let _ = writeln!(s, "| target | measured | required | |\n|---|---|---|---|");
    let _ = writeln!(s, "| hot rate ÷ spread rate | {} | ≥ {} | {} |", rate_text(h), pct(t.rate_ratio_min), met(t.rate_met));
    let _ = writeln!(s, "| placed → ended (confirmed or cancelled) | {} | p99 ≤ {:.0} ms | {} |", latency_text(h), t.p99_ms_max, met(t.p99_met));
    let _ = writeln!(s, "| deadlocks (pg_stat_database, every database of the stack) | {} | 0 | {} |", deadlocks_text(h), yes(t.deadlocks_met));
    let _ = writeln!(s, "| units sold against the stock | {} | never more; levels add up | {} |", sold_text(h), yes(t.sold_met));
    let _ = writeln!(s, "| releases | {} | none left holding units | {} |", releases_text(h), yes(t.releases_met));
    let _ = writeln!(s, "| **all** | | | **{}** |", yes(t.all_met));
    let o = &h.orders;
    let _ = writeln!(
        s,
        "\nOrders: {} placed; {} confirmed, {} cancelled out of stock, {} cancelled with the payment declined, {} not ended{}. `POST /orders` as the driver saw it: p50 {} ms, p99 {} ms; {} refused, {} failed, {} never sent.",
        o.placed,
        o.confirmed,
        o.out_of_stock,
        o.payment_declined,
        o.not_terminal,
        h.sold_out_after_s.map_or("; nothing sold out".to_owned(), |t| format!("; the first order cancelled out of stock was placed {t:.1} s into the phase")),
        opt(h.drive.response_ms.map(|p| p.p50), 1),
        opt(h.drive.response_ms.map(|p| p.p99), 1),
        h.drive.rejected,
        h.drive.errors,
        h.drive.unsent
    );
    let _ = writeln!(
        s,
        "\nPer product: *sold* is the units of confirmed orders (order database); *available*, *reserved* and *held* (the units of the `reserved` reservations) come from the stock database. Once every order has ended, sold = reserved = held and available + reserved = stock.\n"
    );
    let _ = writeln!(s, "| product | stock | asked | sold | available | reserved | held |\n|---|---:|---:|---:|---:|---:|---:|");
    for i in &h.items {
        let _ = writeln!(s, "| {} | {} | {} | {} | {} | {} | {} |", i.product, i.stock, i.asked, i.sold, i.available, i.reserved, i.held);
    }
    for p in &t.sold_problems {
        let _ = writeln!(s, "\n- {p}");
    }
    s
}

pub fn chart(h: &Hot) -> Chart {
    let pts = |f: fn(&super::Second) -> f64| h.series.iter().map(move |p| (p.t, f(p))).collect::<Vec<_>>();
    Chart::new(format!("Hot products: {} products at {:.0} orders/s", h.products.len(), h.rate), "seconds since the phase began", "orders/s")
        .line(Series::new("placed", pts(|p| p.placed)))
        .line(Series::new("ended (confirmed or cancelled)", pts(|p| p.terminal)))
        .line(Series::new("confirmed", pts(|p| p.confirmed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::saga::hot::check::Item;

    #[test]
    fn the_console_says_what_was_met_and_what_was_not() {
        let good = crate::bench::saga::hot::sample();
        let text = console(&good);
        assert!(text.contains("400 placed → 180 confirmed, 190 out of stock, 30 payment declined, 0 not ended; sold out after 14.5 s"), "{text}");
        assert!(text.ends_with("hot products: every target met"), "{text}");
        let mut bad = good.clone();
        bad.items[0] = Item { sold: 103, reserved: 103, held: 103, available: 0, ..bad.items[0].clone() };
        bad.deadlocks.insert("stock".into(), 3);
        bad.sustained = false;
        bad.failure = Some("backlog growing: 10 half-way, 90 at the end".into());
        bad.hot_rate = 15.0;
        bad.targets = super::super::check::targets(15.0, Some(20.0), bad.latency_ms.as_ref(), &bad.orders, &bad.deadlocks, &bad.items, &bad.releases);
        let text = console(&bad);
        for line in ["✗ backlog growing", "✗ hot rate ÷ spread rate: 75% (15 ended/s of the spread rate 20/s: not sustained)", "✗ deadlocks: 3 (stock 3)", "oversold", "NOT every target met"] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(markdown(&bad, 10_000).contains("This phase was NOT sustained: backlog growing"));
    }
}
