/* cs336-nb: only the STIX-Web fonts ship with jupyter-server-mathjax, so use them (the TeX web fonts are not there). */
MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
                    SVG: {font: "STIX-Web"}});
MathJax.Ajax.loadComplete("[MathJax]/config/local/cs336.js");
