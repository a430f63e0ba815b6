"""Reports: tables and figures from data sets and results."""
