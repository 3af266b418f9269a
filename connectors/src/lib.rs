//! Eddy sources, sinks and formats. Nothing lives here yet: the streaming connectors arrive with the streaming core.
