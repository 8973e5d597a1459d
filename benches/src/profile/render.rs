//! `profile`'s table on stdout.

use crate::plan::Profile;

/// The profile as a table.
pub fn render(p: &Profile) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "profile of {} ({}, {} cores, kernel {}), flashsale {} {} ({})",
        p.taken_at,
        p.machine.cpu_model,
        p.machine.cores,
        p.machine.kernel,
        p.build.crate_version,
        p.build.git_commit,
        p.build.cargo_profile
    );
    for (mode, m) in [("embedded", &p.embedded), ("kafka", &p.kafka)] {
        let Some(m) = m else { continue };
        let _ = writeln!(o, "\n{mode}: CPU µs per request, memory per live hold");
        let _ = writeln!(
            o,
            "  {:<10} {:>8} {:>8} {:>9} {:>16} {:>12}",
            "role", "hold", "read", "checkout", "follower hold", "B/live hold"
        );
        for (name, c) in &m.roles {
            let _ = writeln!(
                o,
                "  {:<10} {:>8.1} {:>8.1} {:>9.1} {:>16} {:>12}",
                name,
                c.cpu_us_per_hold,
                c.cpu_us_per_read,
                c.cpu_us_per_checkout,
                c.follower_cpu_us_per_hold
                    .map_or("-".into(), |v| format!("{v:.1}")),
                c.rss_bytes_per_live_hold
                    .map_or("-".into(), |v| format!("{v:.0}"))
            );
        }
        let _ = writeln!(
            o,
            "  single-partition ceiling: {}",
            m.single_partition_ceiling_holds_per_s
                .map_or("not measured".into(), |c| format!(
                    "{c:.0} holds/s{}",
                    if m.ceiling_is_lower_bound {
                        " or more"
                    } else {
                        ""
                    }
                ))
        );
    }
    for n in &p.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}
