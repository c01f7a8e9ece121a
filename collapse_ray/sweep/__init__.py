"""The sweep: a spec read and validated once (spec, yaml_loading), fanned out over Ray Tune
(run; its parts plan, layout, cluster, record, trials, trainable, interrupts, progress),
concluded into cell runs, tables and figures (cells), searched adaptively (contour_search,
contour_searcher) and costed before launch (cost). The only package that
imports Ray Tune and knows the sweep folder's layout."""
