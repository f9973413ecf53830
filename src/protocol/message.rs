//! Message types (spec 5.4, 6.2, 7.1). PLACEHOLDER.
