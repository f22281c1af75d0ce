"""How numbers are shown: the document model (Markdown and HTML), number formatting, plots."""
