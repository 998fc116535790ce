//! A config printed with each validation problem beside the line its path names, so
//! that an operator sees where a problem is, not just its path.

use serde_json::Value;

/// One printed line and the problems that point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub errors: Vec<String>,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// Prints `value` like pretty JSON, recording the path each line starts.
fn print(value: &Value, path: &str, indent: usize, prefix: String, last: bool, out: &mut Vec<(String, String)>) {
    let pad = "  ".repeat(indent);
    let comma = if last { "" } else { "," };
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push((path.to_owned(), format!("{pad}{prefix}{{")));
            let n = map.len();
            for (i, (k, v)) in map.iter().enumerate() {
                let key = serde_json::to_string(k).unwrap_or_default();
                print(v, &child(path, k), indent + 1, format!("{key}: "), i + 1 == n, out);
            }
            out.push((path.to_owned(), format!("{pad}}}{comma}")));
        }
        Value::Array(items) if !items.is_empty() => {
            out.push((path.to_owned(), format!("{pad}{prefix}[")));
            let n = items.len();
            for (i, v) in items.iter().enumerate() {
                print(v, &format!("{path}[{i}]"), indent + 1, String::new(), i + 1 == n, out);
            }
            out.push((path.to_owned(), format!("{pad}]{comma}")));
        }
        scalar => out.push((path.to_owned(), format!("{pad}{prefix}{scalar}{comma}"))),
    }
}

/// The config's lines, each problem attached to the first line of the longest path
/// that is a prefix of the problem's path (the whole config when nothing matches).
pub fn annotate(value: &Value, problems: &[(String, String)]) -> Vec<Line> {
    let mut printed = Vec::new();
    print(value, "", 0, String::new(), true, &mut printed);
    let mut lines: Vec<Line> =
        printed.iter().map(|(_, text)| Line { text: text.clone(), errors: Vec::new() }).collect();
    for (path, message) in problems {
        let is_prefix = |p: &str| {
            p.is_empty() || path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with(['.', '[']))
        };
        let best = printed
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| is_prefix(p))
            .max_by_key(|(i, (p, _))| (p.len(), std::cmp::Reverse(*i)))
            .map_or(0, |(i, _)| i);
        if let Some(line) = lines.get_mut(best) {
            line.errors.push(message.clone());
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn problems_sit_beside_the_line_of_their_path() {
        let config = json!({"version": 3, "endpoints": [{"endpoint": "/a", "backend": [{"url_pattern": "/x/{id}"}]}]});
        let problems = vec![
            ("endpoints[0].backend[0].url_pattern".to_owned(), "bad pattern".to_owned()),
            ("endpoints[0].backend[0].host".to_owned(), "no host".to_owned()),
            ("".to_owned(), "general".to_owned()),
        ];
        let lines = annotate(&config, &problems);
        let at = |needle: &str| lines.iter().find(|l| l.text.contains(needle)).unwrap();
        assert_eq!(at("\"url_pattern\"").errors, vec!["bad pattern"]);
        // A missing key points at the object that lacks it.
        assert_eq!(lines.iter().filter(|l| l.errors.contains(&"no host".to_owned())).count(), 1);
        assert!(lines[0].errors.contains(&"general".to_owned()));
        let text: String = lines.iter().map(|l| format!("{}\n", l.text)).collect();
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reparsed, config, "the printed lines are the config");
    }
}
