"""Price: the step after attribution, turning energy shares into money with the
price card, and repricing stored data when the card changes. Kept on its own so that
a price change never touches how energy was measured or split."""
