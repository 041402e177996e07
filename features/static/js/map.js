// The OGC API pages' maps: MapLibre drawing the collection from the platform's own vector tiles and style, and the
// page's own features (an items page, an item) outlined on top. Nothing is loaded from another server.
import * as maplibregl from '../vendor/maplibre-gl-6.20.0/maplibre-gl.mjs';

maplibregl.setWorkerUrl(new URL('../vendor/maplibre-gl-6.20.0/maplibre-gl-worker.mjs', import.meta.url).href);

function boundsOf(collection) {
  const b = new maplibregl.LngLatBounds();
  const add = (c) => (typeof c[0] === 'number' ? b.extend(c) : c.forEach(add));
  collection.features.forEach((f) => f.geometry && add(f.geometry.coordinates));
  return b;
}

// a page whose collection has no tiles (the catalogue's records): its own features on a plain ground
const PLAIN = { version: 8, sources: {}, layers: [{ id: 'background', type: 'background',
  paint: { 'background-color': '#f3f5f8' } }] };

async function styleOf(url) {
  if (!url) return PLAIN;
  try {
    const answer = await fetch(url);
    return answer.ok ? await answer.json() : PLAIN;
  } catch {
    return PLAIN;
  }
}

for (const el of document.querySelectorAll('[data-udp-map]')) {
  const page = el.dataset.page ? JSON.parse(el.dataset.page) : null;
  const bbox = el.dataset.bbox ? JSON.parse(el.dataset.bbox) : null;
  let bounds = page ? boundsOf(page) : null;
  if (!bounds && bbox && bbox[2] - bbox[0] < 90) bounds = [[bbox[0], bbox[1]], [bbox[2], bbox[3]]];
  const map = new maplibregl.Map({
    container: el, style: await styleOf(el.dataset.style), attributionControl: false,
    ...(bounds ? { bounds, fitBoundsOptions: { padding: 30, maxZoom: 16 } } : { center: [0, 0], zoom: 1 }),
  });
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
  map.on('load', () => {
    if (!page) return;
    map.addSource('page', { type: 'geojson', data: page });
    map.addLayer({ id: 'page-fill', type: 'fill', source: 'page', filter: ['==', ['geometry-type'], 'Polygon'],
      paint: { 'fill-color': '#c2410c', 'fill-opacity': 0.15 } });
    map.addLayer({ id: 'page-line', type: 'line', source: 'page', filter: ['!=', ['geometry-type'], 'Point'],
      paint: { 'line-color': '#c2410c', 'line-width': 2 } });
    map.addLayer({ id: 'page-point', type: 'circle', source: 'page', filter: ['==', ['geometry-type'], 'Point'],
      paint: { 'circle-color': '#ffffff', 'circle-radius': 5, 'circle-stroke-color': '#c2410c',
        'circle-stroke-width': 2 } });
  });
  map.on('error', (e) => { el.dataset.error = String(e.error?.message || e.error || 'error'); });
  map.once('idle', () => { el.dataset.ready = 'true'; });
  window.udpMaps = [...(window.udpMaps || []), map]; // for tests and the curious
}
