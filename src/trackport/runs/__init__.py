"""Run management on any store: listing and tables (listing, table), one run's page (show),
edits and bulk deletion (bulk), comparison and its plots (compare, plots, report). The library
never prints; trackport.cli.runs renders."""
