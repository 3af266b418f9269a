//! Eddy functions: PREDICT and the model registry arrive with model support. Session functions live in eddy-sql for now.
