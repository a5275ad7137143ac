//! The backup engine's rule for turning what a source lists into a tree, whatever order the
//! entries arrive in: names are validated, entries sorted by name bytes, and duplicates merged.
//! Sources (a folder, and next adb, tar, .ab and iOS backups) are not trusted to do any of it.
//!
//! The rule for duplicates (docs/FORMAT.md, "Trees"): the entry listed last wins, as when an
//! archive is extracted; two folders of one name are one folder (a walk lists it by its path,
//! so its content is the union of what the source lists there).

use crate::tree::is_valid_name;

/// Why a name cannot be stored as listed.
pub fn invalid_name_reason(name: &[u8]) -> Option<&'static str> {
    if is_valid_name(name) {
        return None;
    }
    Some(if name.is_empty() {
        "empty name"
    } else if name == b"." || name == b".." {
        "the name `.` or `..`"
    } else if name.contains(&0) {
        "a name with a NUL byte"
    } else if name.contains(&b'/') {
        "a name with a `/`"
    } else {
        "a name longer than 255 bytes"
    })
}

/// Sorts `items` by name, keeps the last of each name, and takes out those whose names cannot
/// be stored (returned with why, in listing order).
pub fn normalize<T>(items: Vec<T>, name: impl Fn(&T) -> &[u8]) -> (Vec<T>, Vec<(T, &'static str)>) {
    let mut rejected = Vec::new();
    let mut kept: Vec<(usize, T)> = Vec::with_capacity(items.len());
    for (position, item) in items.into_iter().enumerate() {
        match invalid_name_reason(name(&item)) {
            Some(why) => rejected.push((item, why)),
            None => kept.push((position, item)),
        }
    }
    // Stable by name, then the later listing first, so that dedup keeps the last one listed.
    kept.sort_by(|(pa, a), (pb, b)| name(a).cmp(name(b)).then(pb.cmp(pa)));
    kept.dedup_by(|later, earlier| name(&later.1) == name(&earlier.1));
    (kept.into_iter().map(|(_, item)| item).collect(), rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_last_wins_and_bad_names_taken_out() {
        let items =
            vec![(b"b".to_vec(), 1), (b"a".to_vec(), 2), (b"..".to_vec(), 3), (b"a".to_vec(), 4), (b"x/y".to_vec(), 5)];
        let (kept, rejected) = normalize(items, |(n, _)| n);
        assert_eq!(kept, vec![(b"a".to_vec(), 4), (b"b".to_vec(), 1)]);
        let why: Vec<_> = rejected.iter().map(|(item, why)| (item.1, *why)).collect();
        assert_eq!(why, vec![(3, "the name `.` or `..`"), (5, "a name with a `/`")]);
    }
}
