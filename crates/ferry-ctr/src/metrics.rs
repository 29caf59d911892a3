//! Evaluation metrics as FuxiCTR computes them (scikit-learn's `roc_auc_score` and `log_loss`).

/// Area under the ROC curve, with tied scores sharing their average rank (as scikit-learn).
/// `None` when only one class is present, where AUC is undefined.
pub fn auc(labels: &[f32], scores: &[f32]) -> Option<f64> {
    let n = labels.len().min(scores.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels[..n].iter().filter(|&&y| y > 0.5).count();
    let negatives = n - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Sum of the (1-based, tie-averaged) ranks of the positives: Mann-Whitney U.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] > 0.5 {
                rank_sum += average_rank;
            }
        }
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// FuxiCTR's gAUC: each group's AUC weighted by its rows, over the groups that hold both
/// classes. `None` when no group does.
pub fn gauc(labels: &[f32], scores: &[f32], groups: &[i64]) -> Option<f64> {
    let n = labels.len().min(scores.len()).min(groups.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by_key(|&i| groups[i]);
    let (mut weighted, mut rows) = (0.0f64, 0usize);
    for block in order.chunk_by(|&a, &b| groups[a] == groups[b]) {
        let l: Vec<f32> = block.iter().map(|&i| labels[i]).collect();
        let s: Vec<f32> = block.iter().map(|&i| scores[i]).collect();
        if let Some(a) = auc(&l, &s) {
            weighted += a * block.len() as f64;
            rows += block.len();
        }
    }
    (rows > 0).then(|| weighted / rows as f64)
}

/// Mean binary cross-entropy with predictions clipped to [1e-7, 1 - 1e-7] (FuxiCTR's epsilon).
pub fn logloss(labels: &[f32], probabilities: &[f32]) -> f64 {
    const EPS: f64 = 1e-7;
    let n = labels.len().min(probabilities.len());
    if n == 0 {
        return 0.0;
    }
    let total: f64 = labels
        .iter()
        .zip(probabilities)
        .map(|(&y, &p)| {
            let p = (p as f64).clamp(EPS, 1.0 - EPS);
            let y = y as f64;
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum();
    total / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauc_weighs_each_group_s_auc_by_its_rows_and_skips_one_class_groups() {
        // Group 1: AUC 1 over 2 rows; group 2: AUC 0.5 over 3 rows; group 3: clicks only.
        let labels = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let scores = [0.9, 0.1, 0.8, 0.2, 0.1, 0.4, 0.6];
        let groups = [1, 1, 2, 2, 2, 3, 3];
        let g = gauc(&labels, &scores, &groups).expect("two groups count");
        assert!((g - (1.0 * 2.0 + 0.5 * 3.0) / 5.0).abs() < 1e-12, "{g}");
        assert_eq!(gauc(&[1.0, 1.0], &[0.3, 0.4], &[7, 7]), None);
    }

    #[test]
    fn auc_matches_hand_computed_values() {
        // Perfect ranking, inverted ranking, and the classic 4-point example (0.75).
        assert_eq!(auc(&[0., 0., 1., 1.], &[0.1, 0.2, 0.8, 0.9]), Some(1.0));
        assert_eq!(auc(&[1., 1., 0., 0.], &[0.1, 0.2, 0.8, 0.9]), Some(0.0));
        assert_eq!(auc(&[0., 0., 1., 1.], &[0.1, 0.4, 0.35, 0.8]), Some(0.75));
        // Ties count one half: pairs (pos 0.5 vs neg 0.5) = 0.5, (pos 0.5 vs neg 0.1) = 1.
        assert_eq!(auc(&[0., 1., 0.], &[0.5, 0.5, 0.1]), Some(0.75));
        assert_eq!(auc(&[1., 1.], &[0.3, 0.4]), None);
    }

    #[test]
    fn logloss_matches_hand_computed_values() {
        let l = logloss(&[1., 0.], &[0.8, 0.4]);
        let expected = -((0.8f64).ln() + (0.6f64).ln()) / 2.0;
        assert!((l - expected).abs() < 1e-6, "{l} vs {expected}");
        // Clipped, not infinite.
        assert!(logloss(&[1.], &[0.0]).is_finite());
    }
}
