"""The `raylm` command line: parsing and printing only; the work lives in the domain modules."""
