/* geoseg report.html: build the Leaflet map from the JSON the page carries (id "geoseg-map-data").
 *
 * No base layer and no tiles: nothing is fetched, the page works from disk with no network.
 * Leaflet's default CRS (EPSG:3857) is kept because the image overlays were warped to it by
 * geoseg: an overlay is stretched linearly between its corners in the map's projection, so an
 * image on a Web Mercator grid lands exactly where it belongs.
 */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("geoseg-map-data").textContent);
  var element = document.getElementById("map");
  if (!element || !data.bounds) {
    return;
  }
  var map = L.map(element, { zoomSnap: 0.25, maxZoom: 24 });
  map.attributionControl.setPrefix("Leaflet " + L.version); // no link: the page must not point off-line
  var layers = {};

  data.overlays.forEach(function (overlay) {
    var layer = L.imageOverlay(overlay.url, overlay.bounds, {
      opacity: overlay.opacity,
      alt: overlay.name,
      className: "geoseg-overlay-" + overlay.id,
    });
    if (overlay.shown) {
      layer.addTo(map);
    }
    layers[overlay.name] = layer;
  });

  function cell(tag, text) {
    var node = document.createElement(tag);
    node.textContent = text; // text, never HTML: class names and ids come from user data
    return node;
  }

  function shown(key, value) {
    if (value === null || value === undefined) {
      return "–";
    }
    if (key === "area_m2" && typeof value === "number") {
      return value.toLocaleString("en-US", { maximumFractionDigits: 1 }) + " m²";
    }
    if (key === "score" && typeof value === "number") {
      return value.toFixed(3);
    }
    return String(value);
  }

  function popup(properties, keys) {
    var table = document.createElement("table");
    keys.forEach(function (key) {
      if (key in properties) {
        var row = document.createElement("tr");
        row.appendChild(cell("th", key));
        row.appendChild(cell("td", shown(key, properties[key])));
        table.appendChild(row);
      }
    });
    var box = document.createElement("div");
    box.className = "geoseg-popup";
    box.appendChild(table);
    return box;
  }

  var byId = {};
  data.vectors.forEach(function (vectors) {
    var layer = L.geoJSON(vectors.features, {
      style: function (feature) {
        var colour = data.colours[feature.properties["class"]] || "#333333";
        return { color: colour, weight: 1.5, opacity: 0.95, fillColor: colour, fillOpacity: 0.3 };
      },
      pointToLayer: function (feature, latlng) {
        return L.circleMarker(latlng, { radius: 4 }); // no marker images to load
      },
      onEachFeature: function (feature, layer) {
        layer.bindPopup(popup(feature.properties, vectors.popup));
      },
    });
    if (vectors.shown) {
      layer.addTo(map);
    }
    layers[vectors.name] = layer;
    byId[vectors.id] = layer;
  });

  L.control.layers(null, layers, { collapsed: false }).addTo(map);
  L.control.scale({ imperial: false }).addTo(map);

  var legend = L.control({ position: "bottomright" });
  legend.onAdd = function () {
    var box = L.DomUtil.create("div", "geoseg-legend");
    box.appendChild(cell("b", data.legend_title));
    data.legend.forEach(function (entry) {
      var row = L.DomUtil.create("div", "geoseg-legend-entry", box);
      var swatch = L.DomUtil.create("span", "swatch", row);
      swatch.style.background = entry.colour;
      row.appendChild(document.createTextNode(entry.name + (entry.note ? " (" + entry.note + ")" : "")));
    });
    return box;
  };
  legend.addTo(map);
  map.fitBounds(data.bounds);

  // A link to one feature: report.html#feature=<layer id>/<n> opens the n-th drawn feature's pop-up.
  var wanted = /^#feature=([^/]+)\/(\d+)$/.exec(window.location.hash);
  if (wanted && byId[decodeURIComponent(wanted[1])]) {
    var feature = byId[decodeURIComponent(wanted[1])].getLayers()[Number(wanted[2])];
    if (feature) {
      map.addLayer(byId[decodeURIComponent(wanted[1])]);
      feature.openPopup();
    }
  }
})();
