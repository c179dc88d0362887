//! File-name globs for `rule_files` and `file_sd_configs.files`, with Go's
//! `filepath.Match` syntax (`*`, `?`, `[...]`, `[^...]`, `\` escapes). Prometheus only
//! allows wildcards in the last path component, so that is all this supports.

use std::path::{Path, PathBuf};

/// True if `s` contains glob meta characters.
pub fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands `pattern` to the existing paths it names, sorted. A pattern without meta
/// characters yields itself if the path exists, else nothing (as Go's `filepath.Glob`).
pub fn expand(pattern: &str) -> Result<Vec<PathBuf>, String> {
    if !has_meta(pattern) {
        let p = PathBuf::from(pattern);
        return Ok(if p.symlink_metadata().is_ok() {
            vec![p]
        } else {
            Vec::new()
        });
    }
    let (dir, file_pat) = match pattern.rfind('/') {
        Some(i) => (&pattern[..i.max(1)], &pattern[i + 1..]),
        None => (".", pattern),
    };
    if has_meta(dir) {
        return Err(format!(
            "glob pattern {pattern:?}: wildcards are only supported in the last path component"
        ));
    }
    // Check the pattern's syntax even when the directory is missing.
    matches(file_pat, "")?;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if matches(file_pat, name)? {
            out.push(if pattern.contains('/') {
                Path::new(dir).join(name)
            } else {
                PathBuf::from(name)
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Go's `filepath.Match` for a single path component.
pub fn matches(pattern: &str, name: &str) -> Result<bool, String> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Validate the whole pattern first so a bad pattern is an error even on mismatch.
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return Err(bad(pattern));
                }
                i += 2;
            }
            '[' => i = parse_class(&p, i).ok_or_else(|| bad(pattern))?.end,
            _ => i += 1,
        }
    }
    Ok(match_from(&p, &n))
}

fn bad(pattern: &str) -> String {
    format!("syntax error in glob pattern {pattern:?}")
}

/// A parsed `[...]` class: index just past its `]`, whether it is negated, and its
/// `(lo, hi)` ranges. Follows Go: an unescaped `-` or `]` cannot be a range endpoint.
struct Class {
    end: usize,
    negate: bool,
    ranges: Vec<(char, char)>,
}

fn parse_class(p: &[char], start: usize) -> Option<Class> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if p.get(i) == Some(&']') && !ranges.is_empty() {
            return Some(Class {
                end: i + 1,
                negate,
                ranges,
            });
        }
        let lo = get_esc(p, &mut i)?;
        let hi = if p.get(i) == Some(&'-') {
            i += 1;
            get_esc(p, &mut i)?
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
}

/// Go's `getEsc`: one possibly escaped class character, which must be followed by more.
fn get_esc(p: &[char], i: &mut usize) -> Option<char> {
    let mut c = *p.get(*i)?;
    if c == '-' || c == ']' {
        return None;
    }
    if c == '\\' {
        *i += 1;
        c = *p.get(*i)?;
    }
    *i += 1;
    if *i >= p.len() {
        return None;
    }
    Some(c)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    // Backtracking point for the most recent `*`.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi + 1, ni));
                    pi += 1;
                    continue;
                }
                '?' if ni < n.len() && n[ni] != '/' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' if ni < n.len() && n[ni] != '/' => {
                    // Pattern validity was checked up front.
                    if let Some(class) = parse_class(p, pi) {
                        let c = n[ni];
                        let hit = class.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                        if hit != class.negate {
                            pi = class.end;
                            ni += 1;
                            continue;
                        }
                    }
                }
                '\\' if pi + 1 < p.len() && ni < n.len() && p[pi + 1] == n[ni] => {
                    pi += 2;
                    ni += 1;
                    continue;
                }
                c if !matches!(c, '*' | '?' | '[' | '\\') && ni < n.len() && n[ni] == c => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        } else if ni == n.len() {
            return true;
        }
        // Mismatch: let the last `*` swallow one more (non-separator) char.
        match star {
            Some((sp, sn)) if sn < n.len() && n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp;
                ni = sn + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_table() {
        let cases = [
            ("*.yml", "rules.yml", true),
            ("*.yml", "rules.yaml", false),
            ("*.yml", ".yml", true),
            ("r?les.yml", "rules.yml", true),
            ("r?les.yml", "rles.yml", false),
            ("[a-c]*.json", "b1.json", true),
            ("[a-c]*.json", "d1.json", false),
            ("[^a-c]*.json", "d1.json", true),
            ("[^a-c]*.json", "a1.json", false),
            ("\\*.yml", "*.yml", true),
            ("\\*.yml", "a.yml", false),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("[\\]]x", "]x", true),
            ("[a\\-z]", "-", true),
            ("[a\\-z]", "b", false),
            ("exact.yml", "exact.yml", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches(p, n), Ok(want), "{p} ~ {n}");
        }
        for bad in ["[a-", "[", "x\\", "[]", "[]]", "[a-]"] {
            assert!(matches(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn expand_lists_matching_files_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.yml", "a.yml", "c.json", "d.yml.bak"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let base = dir.path().to_str().unwrap();
        let got = expand(&format!("{base}/*.yml")).unwrap();
        assert_eq!(
            got,
            vec![dir.path().join("a.yml"), dir.path().join("b.yml")]
        );
        // Literal paths: present or absent.
        assert_eq!(
            expand(&format!("{base}/c.json")).unwrap(),
            vec![PathBuf::from(format!("{base}/c.json"))]
        );
        assert!(expand(&format!("{base}/nope.json")).unwrap().is_empty());
        assert!(expand(&format!("{base}/missing/*.yml")).unwrap().is_empty());
        assert!(expand(&format!("{base}/*/x.yml")).is_err());
    }
}
