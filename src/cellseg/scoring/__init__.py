"""Scores against ground truth: COCO mask AP, PQ and the other metrics, the scoreboard, threshold tuning."""
