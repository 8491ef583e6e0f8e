"""Analysis of finished runs: tables, the Pareto frontier, sensitivity, recommendations."""
