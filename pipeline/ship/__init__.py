"""What leaves a run directory: trainer-ready exports, the dataset card, the Hub push and the HTML report.
May import core, engines, score, synth and select."""
