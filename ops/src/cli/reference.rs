//! `docs/configuration.md`, rendered from the clap definitions (`flashsale
//! config-reference`): every flag of every process with its environment variable,
//! default and meaning, under the same headings as `--help`. A unit test fails when
//! the file in the repository differs, and prints the command that regenerates it.

use clap::{Arg, ArgAction, CommandFactory};
use std::fmt::Write;

/// The command that regenerates the file.
pub const REGENERATE: &str =
    "cargo run -q --bin flashsale -- config-reference > docs/configuration.md";

/// The subcommands in the reference, in this order: the processes first.
const SECTIONS: &[&str] = &[
    "serve",
    "engine",
    "gateway",
    "projector",
    "events",
    "topics",
    "migrate",
];

/// The markdown of `docs/configuration.md`.
pub fn render() -> String {
    let mut root = super::Cli::command();
    root.build();
    let global: Vec<String> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().to_string())
        .collect();
    let mut out = String::new();
    out.push_str(HEADER);
    let _ = writeln!(out, "\n## Every subcommand: logging and tracing\n");
    table(&mut out, root.get_arguments().filter(|a| a.is_global_set()));
    for name in SECTIONS {
        let Some(sub) = root.find_subcommand(name) else {
            continue;
        };
        section(&mut out, &format!("flashsale {name}"), sub, &global);
    }
    out
}

fn section(out: &mut String, path: &str, cmd: &clap::Command, global: &[String]) {
    let own: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && !global.iter().any(|g| g == a.get_id().as_str()))
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .filter(|a| !a.is_hide_set())
        .collect();
    if !own.is_empty() || cmd.get_subcommands().next().is_none() {
        let _ = writeln!(out, "## `{path}`\n");
        if let Some(about) = cmd.get_about() {
            let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
        }
        // Headings in the order `--help` shows them: ungrouped first.
        let mut headings: Vec<Option<&str>> = Vec::new();
        for a in &own {
            if !headings.contains(&a.get_help_heading()) {
                headings.push(a.get_help_heading());
            }
        }
        headings.sort_by_key(|h| h.is_some());
        for h in headings {
            let _ = writeln!(out, "### {}\n", h.unwrap_or("Options"));
            table(
                out,
                own.iter().copied().filter(|a| a.get_help_heading() == h),
            );
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.get_name() != "help" && !sub.is_hide_set() {
            section(out, &format!("{path} {}", sub.get_name()), sub, global);
        }
    }
}

fn table<'a>(out: &mut String, args: impl Iterator<Item = &'a Arg>) {
    out.push_str("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for a in args {
        let mut flag = match a.get_long() {
            Some(l) => format!("`--{l}`"),
            None => continue,
        };
        if let Some(aliases) = a.get_visible_aliases() {
            for al in aliases {
                let _ = write!(flag, " `--{al}`");
            }
        }
        let env = a
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "—".into());
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = match a.get_action() {
            ArgAction::SetTrue => "off".to_string(),
            _ if defaults.is_empty() => "—".to_string(),
            _ => format!("`{}`", defaults.join(",")),
        };
        let help = a
            .get_long_help()
            .or(a.get_help())
            .map(|h| one_line(&h.to_string()))
            .unwrap_or_default();
        let _ = writeln!(out, "| {flag} | {env} | {default} | {help} |");
    }
    out.push('\n');
}

/// A help text on one table line: paragraphs joined, `|`, `<` and `>` escaped.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const HEADER: &str = "# Configuration reference

<!-- Generated from the flags' definitions (ops/src/cli/) by `flashsale config-reference`;
do not edit by hand. After changing a flag or its doc comment, run
  cargo run -q --bin flashsale -- config-reference > docs/configuration.md
(`cargo test -p flashsale-ops` fails until the file matches). -->

Every flag of every process, grouped as `flashsale SUBCOMMAND --help` groups them. Each
flag is also an environment variable (the second column); a flag on the command line
beats the variable. `make run ARGS='--partitions 4'` passes flags to `serve`.

How a value gets to the code: clap parses the flags and variables, and they become the
typed configuration of the process in `ops/src/config.rs` (`ServeConfig`,
`KafkaServeConfig`, `EngineConfig`, `GatewayConfig`, `ProjectorCmdConfig`), whose
fields are named as the flags (`--reply-deadline-ms` is `reply_deadline_ms`) and whose
defaults are these. Each is validated before the process starts: a value out of range
exits 2 with a message naming the flag. Tests and embedders build the same structs
directly (`ServeConfig { partitions: 4, ..ServeConfig::default() }`).

Mode: `flashsale serve` runs embedded (log and snapshots in `--data-dir`) unless
`--kafka` or `FLASHSALE_KAFKA` is set; `--embedded` wins over the environment. The
admission limits (`--max-in-flight`, `--max-in-flight-per-partition`) default by mode:
1,024 and 128 embedded, 4,096 and 1,024 with `--kafka` (see
[performance.md](performance.md)). Deploying Kafka mode: [kafka-mode.md](kafka-mode.md).
";

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")
    }

    #[test]
    fn docs_configuration_md_is_the_rendered_reference() {
        let want = render();
        let have = std::fs::read_to_string(doc_path()).unwrap_or_default();
        if have != want {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .map(|i| i + 1)
                .unwrap_or(have.lines().count().min(want.lines().count()) + 1);
            panic!(
                "docs/configuration.md differs from the flags (first at line {line}); \
                 regenerate it from the repository's root:\n  {REGENERATE}"
            );
        }
    }

    #[test]
    fn every_flag_of_each_process_help_is_in_the_reference() {
        let doc = render();
        let mut root = super::super::Cli::command();
        root.build();
        let root_globals: Vec<String> = root
            .get_arguments()
            .filter(|a| a.is_global_set())
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        for name in SECTIONS {
            let sub = root.find_subcommand_mut(name).expect("subcommand");
            let help = sub.clone().term_width(200).render_long_help().to_string();
            let section = doc
                .split(&format!("## `flashsale {name}"))
                .nth(1)
                .unwrap_or_else(|| panic!("no section for {name}"));
            let section = section.split("\n## ").next().unwrap_or(section);
            let mut n = 0;
            // The option lines of the help: "  -x, --long <VALUE>" or "      --long".
            for line in help
                .lines()
                .map(str::trim_start)
                .filter(|l| l.starts_with('-'))
            {
                let Some(at) = line.find("--") else { continue };
                let long: String = line[at + 2..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if ["help", "version"].contains(&long.as_str()) {
                    continue;
                }
                let global = root_globals.contains(&long);
                let place = if global { doc.as_str() } else { section };
                assert!(
                    place.contains(&format!("`--{long}`")),
                    "`flashsale {name} --help` lists --{long}; docs/configuration.md does not"
                );
                n += 1;
            }
            assert!(n > 0, "no flags found in `flashsale {name} --help`");
        }
    }
}
