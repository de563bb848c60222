//! The declarative YAML config. TODO(config helper).
