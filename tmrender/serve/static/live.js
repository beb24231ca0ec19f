// tmrender live: the microphone goes to the server over WebRTC; the avatar comes back.
"use strict";
let pc = null;
let microphone = null;
const $ = (id) => document.getElementById(id);

function say(text) { $("message").textContent = text || ""; }

function showStats(s) {
  $("mode").textContent = s.mode;
  const lines = [
    `latency       ${s.latency_ms === null ? "-" : s.latency_ms + " ms"} (audio in -> frame out, server)`,
    `frame rate    ${s.fps} fps`,
    `frames        ${s.frames_rendered} rendered, ${s.frames_sent} sent`,
    `skipped       ${s.frames_held} held, ${s.frames_dropped} dropped, ${s.audio_dropped_ms} ms audio dropped`,
    `chunks        ${s.speaking_chunks} speaking of ${s.chunks}`,
    `session       ${s.seconds} s`,
  ];
  $("stats").textContent = lines.join("\n");
  if (s.error) say("render error: " + s.error);
}

async function waitForIce(connection) {
  if (connection.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const check = () => {
      if (connection.iceGatheringState === "complete") {
        connection.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    connection.addEventListener("icegatheringstatechange", check);
  });
}

async function start() {
  say("");
  $("start").disabled = true;
  try {
    microphone = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  } catch (err) {
    say("no microphone: " + err.message);
    $("start").disabled = false;
    return;
  }
  pc = new RTCPeerConnection();
  microphone.getTracks().forEach((track) => pc.addTrack(track, microphone));
  pc.addTransceiver("video", { direction: "recvonly" });
  const channel = pc.createDataChannel("stats");
  channel.onmessage = (event) => showStats(JSON.parse(event.data));
  pc.ontrack = (event) => {
    if (event.track.kind === "video") $("video").srcObject = new MediaStream([event.track]);
  };
  pc.onconnectionstatechange = () => {
    if (["failed", "closed", "disconnected"].includes(pc.connectionState)) {
      say("connection " + pc.connectionState);
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc);
  const response = await fetch("offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const answer = await response.json();
  if (!response.ok) {
    say(answer.error || "the server refused the connection");
    stop();
    return;
  }
  await pc.setRemoteDescription(answer);
  $("mute").disabled = false;
  $("stop").disabled = false;
}

function stop() {
  if (pc) pc.close();
  if (microphone) microphone.getTracks().forEach((track) => track.stop());
  pc = microphone = null;
  $("start").disabled = false;
  $("mute").disabled = true;
  $("stop").disabled = true;
  $("mute").textContent = "Mute";
}

function toggleMute() {
  // a muted track still sends silence: the avatar listens with its mouth closed
  const track = microphone && microphone.getAudioTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  $("mute").textContent = track.enabled ? "Mute" : "Unmute";
}

$("start").onclick = () => start().catch((err) => { say(String(err)); stop(); });
$("mute").onclick = toggleMute;
$("stop").onclick = stop;
