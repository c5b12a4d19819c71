"""What users take away: the submission, the Kaggle CSV, report figures, segment's label images, GeoJSON and tables."""
