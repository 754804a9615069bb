"""Raw data: sources and download, file readers, validation and the composite builders."""
