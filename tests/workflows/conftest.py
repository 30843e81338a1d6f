from tests.bundles.conftest import bundle_cohort  # noqa: F401  (the tiny cohort fixture)
