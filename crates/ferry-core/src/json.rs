//! JSON documents users edit in place: RFC 7396 merge patches (`ferry task retry --set`,
//! graph node edits).

use serde_json::Value;

/// RFC 7396 JSON merge patch: objects merge key by key, `null` removes, the rest replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in changes {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_merge_null_removes_the_rest_replaces() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": "x"});
        merge_patch(
            &mut doc,
            &json!({"a": {"b": 5, "c": null}, "d": [3], "f": {"g": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": {"b": 5}, "d": [3], "e": "x", "f": {"g": 1}})
        );
        let mut scalar = json!(3);
        merge_patch(&mut scalar, &json!({"k": null, "v": 1}));
        assert_eq!(scalar, json!({"v": 1}));
    }
}
