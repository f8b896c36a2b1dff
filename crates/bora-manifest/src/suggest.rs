//! "Did you mean …?": the closest known word to a misspelt one.

/// The candidate closest to `word`, if it is close enough to be a likely
/// typo: at most one edit for short words, about one edit per three
/// characters for longer ones. Case differences count as edits.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|candidate| *candidate != word)
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// For a field name that other tools use, the field that means the same
/// here (`replicas` → `scaling`), if it is among `candidates`.
pub(crate) fn synonym<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    const SYNONYMS: &[(&str, &str)] = &[
        ("replicas", "scaling"),
        ("instances", "scaling"),
        ("autoscaling", "scaling"),
        ("environment", "env"),
        ("variables", "env"),
        ("entrypoint", "command"),
        ("cmd", "command"),
        ("port", "ports"),
        ("expose", "ports"),
        ("size", "instance_type"),
        ("kind", "type"),
        ("healthcheck", "health_check"),
        ("probe", "health_check"),
        ("runtime", "isolation"),
        ("apps", "app"),
        ("name", "app"),
    ];
    let meant = SYNONYMS
        .iter()
        .find(|(other, _)| other.eq_ignore_ascii_case(word))
        .map(|(_, ours)| *ours)?;
    candidates.into_iter().find(|candidate| *candidate == meant)
}

/// The Levenshtein distance: how many single-character insertions,
/// deletions or substitutions turn `a` into `b`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // `row[j]` is the distance between the prefix of `a` read so far and `b[..j]`.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("image", "image"), 0);
        assert_eq!(edit_distance("imagee", "image"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggests_close_words_only() {
        let fields = [
            "name",
            "type",
            "image",
            "command",
            "health_check",
            "instance_type",
        ];
        assert_eq!(closest("imagee", fields), Some("image"));
        assert_eq!(closest("helth_check", fields), Some("health_check"));
        assert_eq!(closest("instance-type", fields), Some("instance_type"));
        assert_eq!(closest("Image", fields), Some("image"));
        assert_eq!(closest("replicas", fields), None);
        assert_eq!(closest("name", fields), None);
    }

    #[test]
    fn knows_other_tools_words() {
        assert_eq!(synonym("replicas", ["name", "scaling"]), Some("scaling"));
        assert_eq!(synonym("Environment", ["env"]), Some("env"));
        // Only fields that exist where the word was used are suggested.
        assert_eq!(synonym("replicas", ["min", "max"]), None);
        assert_eq!(synonym("whatever", ["scaling"]), None);
    }
}
