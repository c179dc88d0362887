//! Relabelling (`model::relabel`): a list of relabel configs built from the input (every
//! field arbitrary, then validated as on load; invalid steps are skipped), applied to an
//! arbitrary label set. No panic, and the result is a well-formed label set.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::model::relabel::{Action, Regex, RelabelConfig, process};
use shoal::model::{Label, Labels};

const ACTIONS: [Action; 11] = [
    Action::Replace,
    Action::Keep,
    Action::Drop,
    Action::KeepEqual,
    Action::DropEqual,
    Action::HashMod,
    Action::LabelMap,
    Action::LabelDrop,
    Action::LabelKeep,
    Action::Lowercase,
    Action::Uppercase,
];

/// Names the fuzzer would take long to spell, and templates.
const NAMES: [&str; 12] = [
    "__name__",
    "job",
    "instance",
    "__address__",
    "__meta_x",
    "a",
    "b_1",
    "$1",
    "${1}",
    "${name}_x",
    "$0",
    "",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(String),
}

impl Name {
    fn get(&self) -> String {
        match self {
            Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_string(),
            Name::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Step {
    action: u8,
    source_labels: Vec<Name>,
    separator: Option<String>,
    regex: Option<String>,
    modulus: Option<u64>,
    target_label: Option<Name>,
    replacement: Option<Name>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    labels: Vec<(Name, String)>,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let d = RelabelConfig::default();
    let mut cfgs = Vec::new();
    for s in input.steps.iter().take(16) {
        let regex = match &s.regex {
            None => d.regex.clone(),
            Some(r) => match Regex::new(r) {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        let cfg = RelabelConfig {
            source_labels: s.source_labels.iter().map(Name::get).collect(),
            separator: s.separator.clone().unwrap_or_else(|| d.separator.clone()),
            regex,
            modulus: s.modulus.unwrap_or(0),
            target_label: s.target_label.as_ref().map(Name::get).unwrap_or_default(),
            replacement: s
                .replacement
                .as_ref()
                .map(Name::get)
                .unwrap_or_else(|| d.replacement.clone()),
            action: ACTIONS[usize::from(s.action) % ACTIONS.len()],
        };
        if cfg.validate().is_ok() {
            cfgs.push(cfg);
        }
    }
    let labels = Labels::new(
        input
            .labels
            .iter()
            .map(|(n, v)| Label::new(n.get(), v.as_str()))
            .collect(),
    );
    if let Some(out) = process(&labels, &cfgs) {
        let v = out.as_slice();
        assert!(v.windows(2).all(|w| w[0].name < w[1].name), "{out:?}");
        assert!(v.iter().all(|l| !l.value.is_empty()), "{out:?}");
        assert_eq!(
            process(&labels, &cfgs),
            Some(out),
            "relabelling is deterministic"
        );
    }
});
