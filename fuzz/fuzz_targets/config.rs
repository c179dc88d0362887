//! Configuration loading (`config`): with an even first byte the rest is a
//! `prometheus.yml` (`config::load_str`: YAML, defaults, validation, relabel configs,
//! rule-file globs), with an odd one a rule file (`config::rules::parse_rule_file`,
//! which also parses every expression). No panic, no hang, no huge allocation.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shoal::config;
use shoal::config::rules::parse_rule_file;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if kind % 2 == 0 {
        if let Ok(cfg) = config::load_str(text) {
            let _ = cfg.validate();
        }
    } else {
        let _ = parse_rule_file(text, Path::new("rules.yml"));
    }
});
