//! The small subset of Go's `text/template` that alerting rules use in labels and
//! annotations: `{{ $labels.NAME }}`, `{{ $value }}`, `{{ $externalLabels.NAME }}`,
//! their dotted forms (`.Labels.NAME`, `.Value`, `.ExternalLabels.NAME`),
//! `{{ index $labels "NAME" }}` and pipes into `humanize`, `humanizePercentage`,
//! `toUpper`, `toLower`, `title` and `printf "FMT"` (one float or string verb).
//!
//! Anything else expands to Prometheus's `<error expanding template: ...>` text, as a
//! failing template does in Prometheus (the alert still fires).

use crate::model::Labels;

/// What a template can refer to.
pub struct TemplateData<'a> {
    pub labels: &'a Labels,
    pub value: f64,
    pub external_labels: &'a Labels,
}

/// Expands `text`; errors are written into the result as Prometheus does.
pub fn expand(name: &str, text: &str, data: &TemplateData<'_>) -> String {
    match try_expand(text, data) {
        Ok(s) => s,
        Err(e) => format!("<error expanding template: error executing template {name}: {e}>"),
    }
}

/// Checks that `text` only uses supported actions (for rule-file validation).
pub fn check(text: &str) -> Result<(), String> {
    let l = Labels::empty();
    try_expand(
        text,
        &TemplateData {
            labels: &l,
            value: 0.0,
            external_labels: &l,
        },
    )
    .map(|_| ())
}

fn try_expand(text: &str, data: &TemplateData<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after
            .find("}}")
            .ok_or_else(|| "unclosed action".to_string())?;
        let mut action = &after[..j];
        // Whitespace trimming markers `{{-` and `-}}`.
        let trim_left = action.starts_with('-');
        let trim_right = action.ends_with('-');
        if trim_left {
            action = &action[1..];
            let t = out.trim_end().len();
            out.truncate(t);
        }
        if trim_right {
            action = &action[..action.len() - 1];
        }
        out.push_str(&eval_action(action.trim(), data)?);
        rest = &after[j + 2..];
        if trim_right {
            rest = rest.trim_start();
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Num(f64),
}

impl Val {
    fn render(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::Num(v) => go_float(*v),
        }
    }
}

fn eval_action(action: &str, data: &TemplateData<'_>) -> Result<String, String> {
    if action.starts_with("/*") {
        return Ok(String::new()); // comment
    }
    let mut stages = split_pipe(action).into_iter();
    let first = stages.next().unwrap_or_default();
    let mut v = eval_term(first.trim(), data)?;
    for stage in stages {
        v = apply(stage.trim(), v)?;
    }
    Ok(v.render())
}

fn split_pipe(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_str = false;
    for c in s.chars() {
        match c {
            '"' => {
                in_str = !in_str;
                cur.push(c);
            }
            '|' if !in_str => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn lookup(labels: &Labels, name: &str) -> Val {
    // A missing key of a Go map renders as "<no value>".
    Val::Str(labels.get(name).unwrap_or("<no value>").to_string())
}

fn eval_term(t: &str, data: &TemplateData<'_>) -> Result<Val, String> {
    let words = split_words(t);
    if words.first().map(String::as_str) == Some("index") && words.len() == 3 {
        let map = match words[1].as_str() {
            "$labels" | ".Labels" => data.labels,
            "$externalLabels" | ".ExternalLabels" => data.external_labels,
            other => return Err(format!("index of {other} is not supported")),
        };
        return Ok(lookup(map, unquote(&words[2])?.as_str()));
    }
    if words.first().map(String::as_str) == Some("printf") && words.len() >= 2 {
        let fmt = unquote(&words[1])?;
        let args = words[2..]
            .iter()
            .map(|w| eval_term(w, data))
            .collect::<Result<Vec<_>, _>>()?;
        return printf(&fmt, &args);
    }
    if words.len() == 2 {
        // `humanize $value` style call.
        let arg = eval_term(&words[1], data)?;
        return apply(&words[0], arg);
    }
    if words.len() != 1 {
        return Err(format!("unsupported action {t:?}"));
    }
    let t = words[0].as_str();
    if t.starts_with('"') {
        return Ok(Val::Str(unquote(t)?));
    }
    if let Ok(n) = t.parse::<f64>() {
        return Ok(Val::Num(n));
    }
    for (prefix, map) in [
        ("$labels.", data.labels),
        (".Labels.", data.labels),
        ("$externalLabels.", data.external_labels),
        (".ExternalLabels.", data.external_labels),
    ] {
        if let Some(name) = t.strip_prefix(prefix) {
            return Ok(lookup(map, name));
        }
    }
    match t {
        "$value" | ".Value" => Ok(Val::Num(data.value)),
        "$labels" | ".Labels" => Ok(Val::Str(map_string(data.labels))),
        "$externalLabels" | ".ExternalLabels" => Ok(Val::Str(map_string(data.external_labels))),
        _ => Err(format!("unsupported action {t:?}")),
    }
}

fn map_string(l: &Labels) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|l| format!("{}:{}", l.name, l.value))
        .collect();
    format!("map[{}]", parts.join(" "))
}

fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_str = false;
    for c in s.chars() {
        if c == '"' {
            in_str = !in_str;
            cur.push(c);
        } else if c.is_whitespace() && !in_str {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn unquote(s: &str) -> Result<String, String> {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map(|s| s.replace("\\\"", "\"").replace("\\n", "\n"))
        .ok_or_else(|| format!("expected a quoted string, got {s}"))
}

fn num(v: &Val) -> Result<f64, String> {
    match v {
        Val::Num(n) => Ok(*n),
        Val::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("cannot convert {s:?} to a number")),
    }
}

fn apply(func: &str, v: Val) -> Result<Val, String> {
    let words = split_words(func);
    match words.first().map(String::as_str) {
        Some("humanize") => Ok(Val::Str(humanize(num(&v)?))),
        Some("humanizePercentage") => Ok(Val::Str(format!("{}%", humanize(num(&v)? * 100.0)))),
        Some("toUpper") => Ok(Val::Str(v.render().to_uppercase())),
        Some("toLower") => Ok(Val::Str(v.render().to_lowercase())),
        Some("title") => {
            let s = v.render();
            let mut out = String::new();
            let mut start = true;
            for c in s.chars() {
                if start && c.is_alphabetic() {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                start = !c.is_alphanumeric();
            }
            Ok(Val::Str(out))
        }
        Some("printf") if words.len() == 2 => printf(&unquote(&words[1])?, &[v]),
        _ => Err(format!("function {func:?} not defined")),
    }
}

/// `printf` with `%s`, `%v`, `%d`, `%f`/`%.Nf`, `%g`, `%e` verbs and `%%`.
fn printf(fmt: &str, args: &[Val]) -> Result<Val, String> {
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    let mut args = args.iter();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut prec: Option<usize> = None;
        if it.peek() == Some(&'.') {
            it.next();
            let mut d = String::new();
            while let Some(c) = it.peek().copied().filter(char::is_ascii_digit) {
                d.push(c);
                it.next();
            }
            prec = Some(d.parse().unwrap_or(0));
        }
        let verb = it.next().ok_or("printf: format ends in %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let a = args.next().ok_or("printf: missing argument")?;
        match verb {
            's' | 'v' => out.push_str(&a.render()),
            'd' => out.push_str(&format!("{}", num(a)?.trunc() as i64)),
            'f' => out.push_str(&format!("{:.*}", prec.unwrap_or(6), num(a)?)),
            'e' => out.push_str(&format!("{:.*e}", prec.unwrap_or(6), num(a)?)),
            'g' => out.push_str(&go_float(num(a)?)),
            other => return Err(format!("printf: unsupported verb %{other}")),
        }
    }
    Ok(Val::Str(out))
}

/// Prometheus's `humanize`: SI prefixes, 4 significant digits.
fn humanize(v: f64) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return go_float(v);
    }
    let a = v.abs();
    let (div, prefix) = if a >= 1.0 {
        let mut p = "";
        let mut d = 1.0;
        for s in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if a / d < 1000.0 {
                break;
            }
            d *= 1000.0;
            p = s;
        }
        (d, p)
    } else {
        let mut p = "";
        let mut d = 1.0;
        for s in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if a / d >= 1.0 {
                break;
            }
            d /= 1000.0;
            p = s;
        }
        (d, p)
    };
    format!("{}{prefix}", sig4(v / div))
}

/// `%.4g` of Go.
fn sig4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    let decimals = (3 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Go's `%v` of a float64: shortest representation, exponent form below 1e-4 and from
/// 1e21 up.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e21).contains(&a) {
        let s = format!("{v:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", e.abs());
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &str) -> String {
        let labels = Labels::from_pairs(&[("instance", "a:1"), ("job", "api")]);
        let ext = Labels::from_pairs(&[("dc", "eu")]);
        expand(
            "t",
            t,
            &TemplateData {
                labels: &labels,
                value: 0.25,
                external_labels: &ext,
            },
        )
    }

    #[test]
    fn expands_like_prometheus() {
        let cases = [
            ("plain", "plain"),
            ("{{ $labels.instance }} is down", "a:1 is down"),
            ("{{$labels.job}}/{{ .Labels.instance }}", "api/a:1"),
            ("v={{ $value }}", "v=0.25"),
            ("{{ .Value }}", "0.25"),
            ("{{ $externalLabels.dc }}", "eu"),
            ("{{ index $labels \"job\" }}", "api"),
            ("{{ $labels.nope }}", "<no value>"),
            ("{{ $value | humanizePercentage }}", "25%"),
            ("{{ printf \"%.1f\" $value }}", "0.2"),
            ("{{ $value | printf \"%.3f\" }}", "0.250"),
            ("{{ $labels.job | toUpper }}", "API"),
            ("a {{- \" b\" -}} c", "a bc"),
        ];
        for (t, want) in cases {
            assert_eq!(run(t), want, "{t}");
        }
        assert!(run("{{ $foo }}").starts_with("<error expanding template"));
        assert!(run("{{ $value").starts_with("<error expanding template"));
        assert!(check("{{ range . }}").is_err());
        assert!(check("{{ $labels.x }} and {{ $value | humanize }}").is_ok());
    }

    #[test]
    fn numbers_format_like_go() {
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(1e6), "1000000");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(humanize(1234567.0), "1.235M");
        assert_eq!(humanize(0.001), "1m");
        assert_eq!(humanize(12.0), "12");
    }
}
