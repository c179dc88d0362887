//! `shoal check config FILE`: loads a config and every rule file it names, and reports
//! like `promtool check config` does.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{ConfigError, load_file, load_rule_file};

/// What a successful check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub config_file: PathBuf,
    pub scrape_configs: usize,
    /// Each rule file found (after glob expansion) with its number of rules.
    pub rule_files: Vec<(PathBuf, usize)>,
}

/// Loads and validates `path` and its rule files.
pub fn check_config_file(path: &Path) -> Result<CheckReport, ConfigError> {
    let cfg = load_file(path)?;
    let mut rule_files = Vec::new();
    for rf in cfg.rule_file_paths()? {
        let f = load_rule_file(&rf)?;
        rule_files.push((rf, f.rule_count()));
    }
    Ok(CheckReport {
        config_file: path.to_path_buf(),
        scrape_configs: cfg.scrape_configs.len(),
        rule_files,
    })
}

/// promtool's layout:
/// ```text
/// Checking prometheus.yml
///   SUCCESS: 1 rule files found
///  SUCCESS: prometheus.yml is valid prometheus config file syntax
///
/// Checking rules.yml
///   SUCCESS: 2 rules found
/// ```
impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cfg = self.config_file.display();
        writeln!(f, "Checking {cfg}")?;
        if !self.rule_files.is_empty() {
            writeln!(f, "  SUCCESS: {} rule files found", self.rule_files.len())?;
        }
        writeln!(f, " SUCCESS: {cfg} is valid prometheus config file syntax")?;
        for (path, n) in &self.rule_files {
            writeln!(f)?;
            writeln!(f, "Checking {}", path.display())?;
            writeln!(f, "  SUCCESS: {n} rules found")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_rule_files_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        std::fs::write(
            dir.path().join("rules/a.yml"),
            "groups:\n  - name: a\n    rules:\n      - record: x:y\n        expr: sum(up)\n      - alert: Down\n        expr: up == 0\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("rules/b.yml"), "groups: []\n").unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            "rule_files: ['rules/*.yml']\nscrape_configs:\n  - job_name: a\n",
        )
        .unwrap();
        let r = check_config_file(&cfg).unwrap();
        assert_eq!(r.scrape_configs, 1);
        assert_eq!(
            r.rule_files,
            vec![
                (dir.path().join("rules/a.yml"), 2),
                (dir.path().join("rules/b.yml"), 0)
            ]
        );
        let text = r.to_string();
        assert!(text.contains("  SUCCESS: 2 rule files found\n"), "{text}");
        assert!(
            text.contains("is valid prometheus config file syntax"),
            "{text}"
        );
        assert!(text.contains("  SUCCESS: 2 rules found\n"), "{text}");

        // A broken rule file fails the check and names the file.
        std::fs::write(
            dir.path().join("rules/b.yml"),
            "groups:\n  - name: b\n    rules:\n      - record: x\n        expr: 'sum('\n",
        )
        .unwrap();
        let e = check_config_file(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("b.yml") && e.contains("could not parse expression"),
            "{e}"
        );
    }
}
