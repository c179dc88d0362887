//! The file_sd file format: a JSON or YAML list of `{targets: [...], labels: {...}}`,
//! chosen by the file extension. As in Prometheus, YAML is strict (unknown keys are
//! errors) and JSON ignores unknown keys; label names are validated; each group gets the
//! source `path:index` and the label `__meta_filepath`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{ConfigError, TargetGroup, labels_from_map, parse_yaml, read_file};
use crate::model::Label;

/// The label holding the file a group was read from.
pub const FILEPATH_LABEL: &str = "__meta_filepath";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlGroup {
    targets: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct JsonGroup {
    targets: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
}

/// `(targets, labels)` of one group as written in the file.
type RawGroup = (Option<Vec<String>>, Option<BTreeMap<String, String>>);

/// Reads one file_sd file.
pub fn read_groups(path: &Path) -> Result<Vec<TargetGroup>, ConfigError> {
    let text = read_file(path)?;
    parse_groups(&text, path)
}

/// Parses file_sd content; `path` picks the format and is recorded in the groups.
pub fn parse_groups(text: &str, path: &Path) -> Result<Vec<TargetGroup>, ConfigError> {
    let file = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let raw: Vec<Option<RawGroup>> = match ext.as_str() {
        "json" => serde_json::from_str::<Vec<Option<JsonGroup>>>(text)
            .map_err(|e| ConfigError::Yaml {
                file: file.clone(),
                message: e.to_string(),
                line: Some(e.line() as u64),
                column: Some(e.column() as u64),
            })?
            .into_iter()
            .map(|g| g.map(|g| (g.targets, g.labels)))
            .collect(),
        "yml" | "yaml" => parse_yaml::<Vec<Option<YamlGroup>>>(text, &file)?
            .into_iter()
            .map(|g| g.map(|g| (g.targets, g.labels)))
            .collect(),
        _ => {
            return Err(ConfigError::Invalid {
                file,
                message: "unhandled file extension (want .json, .yml or .yaml)".into(),
            });
        }
    };
    let mut out = Vec::with_capacity(raw.len());
    for (i, g) in raw.into_iter().enumerate() {
        let Some((targets, labels)) = g else {
            return Err(ConfigError::Invalid {
                file,
                message: format!("nil target group item found (entry {i})"),
            });
        };
        let labels =
            labels_from_map(labels.unwrap_or_default()).map_err(|m| ConfigError::Invalid {
                file: file.clone(),
                message: format!("entry {i}: {m}"),
            })?;
        let mut lv: Vec<Label> = labels.into_vec();
        lv.push(Label::new(FILEPATH_LABEL, file.as_str()));
        out.push(TargetGroup {
            targets: targets.unwrap_or_default(),
            labels: crate::model::Labels::new(lv),
            source: format!("{file}:{i}"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    #[test]
    fn parses_json_and_yaml() {
        let json = r#"[{"targets": ["a:1", "b:2"], "labels": {"env": "prod"}, "extra": 1},
                       {"targets": ["c:3"]}]"#;
        let g = parse_groups(json, Path::new("/sd/x.json")).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].targets, vec!["a:1", "b:2"]);
        assert_eq!(
            g[0].labels,
            Labels::from_pairs(&[("__meta_filepath", "/sd/x.json"), ("env", "prod")])
        );
        assert_eq!(g[0].source, "/sd/x.json:0");
        assert_eq!(g[1].source, "/sd/x.json:1");
        assert_eq!(
            g[1].labels,
            Labels::from_pairs(&[("__meta_filepath", "/sd/x.json")])
        );

        let yaml = "- targets: ['a:1']\n  labels:\n    env: dev\n";
        let g = parse_groups(yaml, Path::new("t.yml")).unwrap();
        assert_eq!(g[0].labels.get("env"), Some("dev"));
        assert!(parse_groups("", Path::new("t.yaml")).unwrap().is_empty());
    }

    #[test]
    fn errors() {
        let cases = [
            (
                "- targets: ['a:1']\n  extra: 1\n",
                "t.yml",
                "unknown field `extra`",
            ),
            (
                "[{\"targets\": [\"a\"], \"labels\": {\"a-b\": \"x\"}}]",
                "t.json",
                "\"a-b\" is not a valid label name",
            ),
            ("[null]", "t.json", "nil target group item found"),
            ("[{\"targets\": [", "t.json", "EOF"),
            ("[]", "t.txt", "unhandled file extension"),
        ];
        for (text, name, want) in cases {
            let e = parse_groups(text, Path::new(name)).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
